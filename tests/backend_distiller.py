"""The Distiller on the Keras backend this process runs, for tests/test_backends.py.

`python tests/backend_distiller.py DIR` (with `KERAS_BACKEND` set) trains small
functional classifiers with RKD-D and RKD-A on their embeddings, Hinton's KD
on their logits, a FitNet hint between their hidden layers and a task loss,
and writes what the tests check into `DIR/<backend>.npz`: the history and
weights of a run from weights drawn by NumPy (the same on every backend), the
teacher before and after, two runs from the same Keras seed, a `.keras` round
trip, a file saved on TensorFlow (`DIR/tensorflow.keras`, if there) loaded
here, mixed precision, `RetrievalRecall`, `cache_teacher_embeddings`, a term that reads
the labels (DKD), a teacher trained with the triplet loss, a non-finite teacher and
inputs, the guards (a frozen student, overflowing BatchNorm statistics, cached
tensors of another width) and `export_student`. The TensorFlow suite calls `run()` in its own process to
make the reference.
"""

import sys
from pathlib import Path

import keras
import numpy as np

from rkd_keras import Distiller, RetrievalRecall, Term, TripletLoss, embedding_model, export_student, recall_at_k

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 12)).astype("float32")
LABELS = RNG.integers(0, 5, 96)
ON_EMBEDDINGS = {"teacher_layer": "embedding", "student_layer": "embedding"}


def classifier(hidden, embedding, name, seed=None):
    """12 → hidden (ReLU, L2) → BatchNorm → embedding → 5 logits; weights by NumPy from `seed`, or by Keras."""
    inputs = keras.Input((12,))
    h = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3),
                           name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    e = keras.layers.Dense(embedding, name="embedding")(h)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(e), name=name)
    if seed is not None:
        rng = np.random.default_rng(seed)
        low = {True: 0.5, False: -0.5}  # BatchNorm's moving variance must be positive
        model.set_weights([rng.uniform(low["variance" in v.path], 1.0, size=v.shape).astype("float32")
                           for v in model.weights])
    return model


def distiller(teacher, student, optimizer=None, **compile_options):
    """The four terms and a cross-entropy task loss; the FitNet regressor's weights drawn by NumPy."""
    model = Distiller(teacher, student, terms=[
        Term("rkd_distance", **ON_EMBEDDINGS),
        Term("rkd_angle", 2.0, **ON_EMBEDDINGS),
        Term("hinton_kd", 0.5),
        Term("fitnet", 0.1, teacher_layer="hidden", student_layer="hidden"),
    ])
    (regressor,) = model.regressors
    regressor.set_weights([np.random.default_rng(3).uniform(-0.1, 0.1, size=w.shape).astype("float32")
                           for w in regressor.get_weights()])
    model.compile(optimizer or keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  **compile_options)
    return model


def numpy_weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def fit(model, x=X, **options):
    history = model.fit(x, LABELS, batch_size=32, epochs=3, shuffle=False, verbose=0, **options).history
    return {key: np.asarray(values) for key, values in history.items()}


def _same_seed_twice(out):
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        model = Distiller(classifier(32, 16, "teacher"), classifier(16, 8, "student"))
        model.compile(keras.optimizers.Adam(1e-2))
        history = model.fit(X, batch_size=32, epochs=2, shuffle=True, verbose=0).history
        runs.append((history["loss"], numpy_weights(model.student)))
    out["seed/loss"] = np.asarray([run[0] for run in runs])
    out["seed/max_weight_difference"] = np.array(
        max(float(np.max(np.abs(a - b))) for a, b in zip(runs[0][1], runs[1][1]))
    )


def _mixed_precision(out):
    for policy in ("mixed_float16", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = distiller(classifier(32, 16, "teacher", seed=1), classifier(16, 8, "student", seed=2),
                              keras.optimizers.Adam(1e-2))
            out[f"{policy}/loss_scaled"] = np.array(isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer))
            out[f"{policy}/compute_dtype"] = np.array(model.student.get_layer("logits").compute_dtype)
            for key, values in fit(model).items():
                out[f"{policy}/{key}"] = values
        finally:
            keras.mixed_precision.set_global_policy("float32")


class NonFiniteTeacher(keras.Model):
    def call(self, x):
        return x * np.nan


def _non_finite_teacher(out):
    teacher = NonFiniteTeacher()
    teacher.build((None, 12))
    for eager in (False, True):
        model = Distiller(teacher, classifier(16, 12, "student"), angle_weight=0.0)
        model.compile("sgd", run_eagerly=eager)
        try:
            history = model.fit(X[:32], batch_size=32, epochs=1, verbose=0).history
            out[f"nan_teacher/eager={eager}"] = np.array(f"loss {history['loss'][0]}")
        except Exception as error:  # the kind differs per backend; the test reads the message
            out[f"nan_teacher/eager={eager}"] = np.array(f"{type(error).__name__}: {error}")


def _non_finite_inputs(out):
    """A NaN image in the batch, with the teacher run in the step and with its tensors cached."""
    x = X[:32].copy()
    x[3] = np.nan
    for eager in (False, True):
        for cached in (False, True):
            # Fresh models each time: on JAX, an error in fit's first step leaves the variables of the
            # models it trained without values (Keras purges them before the step and restores them after).
            teacher = classifier(16, 12, "teacher", seed=1)
            model = Distiller(teacher, classifier(16, 12, "student", seed=2), angle_weight=0.0)
            model.compile("sgd", run_eagerly=eager)
            key = f"nan_inputs/eager={eager}/cached={cached}"
            try:
                data = model.cache_teacher_embeddings(x) if cached else x
                history = model.fit(data, batch_size=32, epochs=1, verbose=0).history
                out[key] = np.array(f"loss {history['loss'][0]}")
            except Exception as error:  # the kind differs per backend; the test reads the message
                out[key] = np.array(f"{type(error).__name__}: {error}")


def _error(call):
    try:
        return f"returned {call()}"
    except Exception as error:  # the kind differs per backend; the test reads the message
        return f"{type(error).__name__}: {error}"


def _refused_steps_leave_the_weights_of_the_last_good_step(out):
    """NaN in the last of 3 batches: the error comes after 2 applied steps, whose weights the model keeps.

    JAX reads a step's status after the next step is queued (or at the end of the epoch); with
    steps_per_execution=2 (not on PyTorch, which Keras runs one step at a time) the failing step is
    the first of the second execution.
    """
    x = X.copy()
    x[70] = np.nan
    reference = Distiller(classifier(16, 12, "teacher", seed=1), classifier(16, 12, "student", seed=2), angle_weight=0.0)
    reference.compile(keras.optimizers.SGD(0.1))
    reference.fit(x[:64], batch_size=32, epochs=1, shuffle=False, verbose=0)
    for steps in (1,) if keras.backend.backend() == "torch" else (1, 2):
        model = Distiller(classifier(16, 12, "teacher", seed=1), classifier(16, 12, "student", seed=2), angle_weight=0.0)
        model.compile(keras.optimizers.SGD(0.1), steps_per_execution=steps)
        key = f"guard/nan_last_batch/steps_per_execution={steps}"
        out[key] = np.array(_error(lambda: model.fit(x, batch_size=32, epochs=1, shuffle=False, verbose=0).history))
        out[f"{key}/iterations"] = np.array(int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
        out[f"{key}/max_difference"] = np.array(max(
            float(np.max(np.abs(a - b))) for a, b in zip(numpy_weights(model.student), numpy_weights(reference.student))
        ))


def _labelled_term(out):
    """DKD (it reads each batch's labels) on the logits and RKD-A on the embeddings, from the teacher's pass and cached."""
    for cached in (False, True):
        model = Distiller(classifier(32, 16, "teacher", seed=1), classifier(16, 8, "student", seed=2), terms=[
            Term("dkd", 0.5), Term("rkd_angle", 1.0, **ON_EMBEDDINGS),
        ])
        model.compile(keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = fit(model, model.cache_teacher_embeddings(X) if cached else X)
        if cached:
            out["labelled/cached_loss"] = history["loss"]
        else:
            for key, values in history.items():
                out[f"labelled/{key}"] = values
    model.compile(keras.optimizers.SGD(0.05))
    out["labelled/without_labels"] = np.array(_error(lambda: model.fit(X, batch_size=32, epochs=1, verbose=0).history))


def _guards(out):
    """A frozen student, overflowing BatchNorm statistics, cached teacher tensors of another width."""
    teacher = classifier(16, 12, "teacher", seed=1)
    Distiller(teacher, classifier(16, 12, "student", seed=2))  # freezes the teacher
    out["guard/frozen_clone"] = np.array(_error(lambda: Distiller(teacher, keras.models.clone_model(teacher))))

    images = np.random.default_rng(0).uniform(0, 1, size=(16, 16, 16, 1)).astype("float32") * 1e30
    student = embedding_model("small_cnn", 4, input_shape=(16, 16, 1), width=2, name="student")
    model = Distiller(embedding_model("small_cnn", 8, input_shape=(16, 16, 1), width=2, name="teacher"), student)
    model.compile("sgd")
    out["guard/overflow"] = np.array(_error(lambda: model.fit(images, batch_size=8, epochs=1, verbose=0).history))
    out["guard/overflow/first_batchnorm"] = np.array(
        next(layer.name for layer in student.layers if isinstance(layer, keras.layers.BatchNormalization))
    )
    out["guard/overflow/non_finite_after"] = np.array(" ".join(
        v.path for v in student.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))
    ))

    terms = [Term("rkd_distance", teacher_layer="embedding")]
    cached = Distiller(classifier(32, 16, "teacher", seed=1), classifier(16, 8, "student"),
                       terms=terms).cache_teacher_embeddings(X[:32])
    model = Distiller(classifier(16, 12, "teacher", seed=1), classifier(16, 8, "student"), terms=terms)
    model.compile("sgd")
    out["guard/cached_width"] = np.array(_error(lambda: model.fit(cached, batch_size=32, epochs=1, verbose=0).history))


def _export(out, folder):
    student = classifier(16, 8, "student", seed=2)
    try:
        path = export_student(student, folder / f"{keras.backend.backend()}_savedmodel")
    except Exception as error:
        out["export/error"] = np.array(f"{type(error).__name__}: {error}")
        return
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    served = loaded.serve(tf.constant(X)).numpy()
    out["export/max_difference"] = np.array(float(np.max(np.abs(served - keras.ops.convert_to_numpy(student(X))))))


def _teacher_with_the_triplet_loss(out):
    """The paper's teacher loss (distance-weighted sampling, unseeded) inside a compiled training step."""
    teacher = classifier(32, 16, "teacher", seed=1)
    teacher.compile(keras.optimizers.Adam(1e-2), loss=TripletLoss())
    out["triplet/loss"] = fit(teacher)["loss"]


def _models_leave_their_input_alone(out):
    """A model of `embedding_model` normalizes its [0, 255] input without changing the caller's tensor."""
    images = keras.ops.convert_to_tensor(np.random.default_rng(4).uniform(0, 255, size=(4, 28, 28, 1)).astype("float32"))
    before = keras.ops.convert_to_numpy(images).copy()
    model = embedding_model("small_cnn", 8, input_shape=(28, 28, 1), width=4)
    model(images, training=False)
    out["models/input_unchanged"] = np.array(np.array_equal(keras.ops.convert_to_numpy(images), before))


def run(folder):
    """Everything the tests read, as `{key: array}`; writes `<backend>.keras` into `folder`."""
    folder = Path(folder)
    backend = keras.backend.backend()
    out = {}
    teacher = classifier(32, 16, "teacher", seed=1)
    teacher_before = numpy_weights(teacher)
    student = classifier(16, 8, "student", seed=2)
    norm_before = numpy_weights(student.get_layer("norm"))
    model = distiller(teacher, student)
    for key, values in fit(model, callbacks=[RetrievalRecall((X, LABELS), ks=(1,))]).items():
        out[f"fit/{key}"] = values
    embeddings = keras.ops.convert_to_numpy(model.student.predict(X, verbose=0))
    out["recall/direct"] = np.array(recall_at_k(embeddings, LABELS, ks=(1,))[1])
    # The README's form: a batched tf.data.Dataset (its last batch smaller), on every backend.
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((X, LABELS)).batch(40)
    out["recall/dataset"] = np.array(RetrievalRecall(dataset, ks=(1,)).embed(model)[0])
    out["fit/teacher_unchanged"] = np.array(all(np.array_equal(a, b) for a, b in zip(teacher_before, numpy_weights(teacher))))
    out["fit/teacher_trainable"] = np.array(teacher.trainable)
    out["fit/norm_statistics_change"] = np.array(
        max(float(np.max(np.abs(a - b))) for a, b in zip(norm_before, numpy_weights(student.get_layer("norm"))))
    )
    for i, weight in enumerate(numpy_weights(model.student) + numpy_weights(model.regressors[0])):
        out[f"fit/weight_{i}"] = weight
    out["fit/predictions"] = keras.ops.convert_to_numpy(model.predict(X, verbose=0))

    model.save(folder / f"{backend}.keras")
    restored = keras.models.load_model(folder / f"{backend}.keras")
    out["roundtrip/max_prediction_difference"] = np.array(
        float(np.max(np.abs(keras.ops.convert_to_numpy(restored.predict(X, verbose=0)) - out["fit/predictions"])))
    )
    out["roundtrip/teacher_trainable"] = np.array(restored.teacher.trainable)
    for each in (model, restored):  # the optimizer state came back too: both continue alike
        each.fit(X[:32], LABELS[:32], batch_size=32, epochs=1, shuffle=False, verbose=0)
    out["roundtrip/max_difference_after_a_step"] = np.array(float(np.max(np.abs(
        keras.ops.convert_to_numpy(restored.predict(X, verbose=0)) - keras.ops.convert_to_numpy(model.predict(X, verbose=0))
    ))))
    if backend != "tensorflow" and (folder / "tensorflow.keras").exists():
        from_tensorflow = keras.models.load_model(folder / "tensorflow.keras")
        out["from_tensorflow/predictions"] = keras.ops.convert_to_numpy(from_tensorflow.predict(X, verbose=0))

    _same_seed_twice(out)
    _mixed_precision(out)

    cached = distiller(classifier(32, 16, "teacher", seed=1), classifier(16, 8, "student", seed=2))
    out["cache/loss"] = fit(cached, cached.cache_teacher_embeddings(X))["loss"]

    _labelled_term(out)
    _teacher_with_the_triplet_loss(out)
    _models_leave_their_input_alone(out)
    _non_finite_teacher(out)
    _non_finite_inputs(out)
    _refused_steps_leave_the_weights_of_the_last_good_step(out)
    _guards(out)
    _export(out, folder)
    return out


if __name__ == "__main__":
    np.savez(Path(sys.argv[1]) / f"{keras.backend.backend()}.npz", **run(sys.argv[1]))
