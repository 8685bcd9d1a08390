"""One process of a Distiller trained with Keras's distribution API on JAX, for tests/test_multiprocess_jax.py.

`python tests/backend_multiprocess.py PROCESS_ID NUM_PROCESSES PORT OUT.json`
(with `KERAS_BACKEND=jax`): with NUM_PROCESSES > 1 the processes meet at the
coordinator `localhost:PORT` (`keras.distribution.initialize`, which calls
`jax.distributed.initialize`), exchange data over gloo CPU collectives, and
train one `keras.distribution.DataParallel` Distiller over all their devices:
each process reads its share of every global batch of a `tf.data` pipeline,
and the terms are computed over the global batch. Process 0 writes the
history and the student's weights to OUT.json.
"""

import json
import sys

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402

if num_processes > 1:
    keras.distribution.initialize(f"localhost:{port}", num_processes, process_id)
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from rkd_keras import Distiller, Term, rkd_angle  # noqa: E402


def classifier(hidden, embedding, name, seed):
    """12 → hidden (ReLU) → embedding → 5 logits, with weights drawn by NumPy (the same in every process)."""
    inputs = keras.Input((12,))
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    e = keras.layers.Dense(embedding, name="embedding")(h)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(e), name=name)
    rng = np.random.default_rng(seed)
    model.set_weights([0.3 * rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


rng = np.random.default_rng(0)
x = rng.normal(size=(128, 12)).astype("float32")
batches = tf.data.Dataset.from_tensor_slices(x).batch(32)  # 4 global batches of 32
on_embeddings = {"teacher_layer": "embedding", "student_layer": "embedding"}
distiller = Distiller(classifier(32, 16, "teacher", 1), classifier(16, 8, "student", 2), terms=[
    Term("rkd_distance", **on_embeddings),
    Term("rkd_angle", 2.0, **on_embeddings),
    Term("hinton_kd", 0.5),  # per-example, on the logits
])
distiller.compile(keras.optimizers.SGD(0.05))
result = {"devices": len(jax.devices()), "processes": jax.process_count()}
if num_processes == 1:  # the control: RKD-A of the first batch as a whole and as two halves
    embed = [keras.Model(m.input, m.get_layer("embedding").output) for m in (distiller.teacher, distiller.student)]
    t, s = (keras.ops.convert_to_numpy(model(x[:32])) for model in embed)
    result["first_batch_rkd_angle"] = float(rkd_angle(t, s))
    result["first_batch_rkd_angle_halves"] = [float(rkd_angle(t[i : i + 16], s[i : i + 16])) for i in (0, 16)]
result["history"] = distiller.fit(batches, epochs=2, verbose=0).history
if process_id == 0:
    result["weights"] = [np.asarray(w).tolist() for w in distiller.student.get_weights()]
    with open(out, "w") as file:
        json.dump(result, file)
