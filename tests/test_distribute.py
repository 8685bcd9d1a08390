"""Global-batch relations under tf.distribute: two logical CPU devices equal one device.

Relational terms see the all-gathered global batch; per-example terms (FitNet
here, with its regressor, and DKD with each replica's labels) are computed on
each replica's half and averaged.
"""

import json
import subprocess
import sys

import pytest

# Logical devices must be configured before TensorFlow starts, so the runs
# happen in a fresh process. One SGD step on one global batch of 32, with a
# task loss and weight decay, so every term's gradient scale is checked: the
# default RKD-D + RKD-A, and a mix of a relational (RKD-A) and a per-example
# term (FitNet on the hidden layers).
CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from rkd_keras import Distiller, Term

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 12)).astype(np.float32)
y = rng.normal(size=(32, 8)).astype(np.float32)


def mlp(hidden, out, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    h = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2),
                           name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(out)(h))


labels = rng.integers(0, 8, 32)
TERMS = {
    "rkd": None,
    "mixed": [Term("rkd_angle", 2.0), Term("fitnet", 0.5, teacher_layer="hidden", student_layer="hidden")],
    # DKD reads each replica's labels; the 8 outputs are logits.
    "labelled": [Term("rkd_angle", 2.0), Term("dkd", 0.5)],
}


def step(strategy, global_batch_relations, terms):
    labelled = terms == "labelled"
    with strategy.scope():
        weights = {} if TERMS[terms] else {"angle_weight": 2.0}
        # DKD compares logits of the same 8 classes.
        distiller = Distiller(mlp(32, 8 if labelled else 16, 1), mlp(16, 8, 2), terms=TERMS[terms], **weights,
                              global_batch_relations=global_batch_relations)
        distiller.compile(keras.optimizers.SGD(0.5),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) if labelled else "mse")
    initial = [w.numpy().copy() for w in distiller.trainable_weights]
    logs = distiller.fit(x, labels if labelled else y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
    return {k: v[0] for k, v in logs.items()}, initial, [w.numpy().copy() for w in distiller.trainable_weights]


# One strategy for every mirrored run: a second one would reuse its collective keys.
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {"replicas": mirrored.num_replicas_in_sync}
for terms in TERMS:
    one_logs, initial, one_weights = step(tf.distribute.OneDeviceStrategy("/cpu:0"), True, terms)
    for mode in (True, False):
        logs, _, weights = step(mirrored, mode, terms)
        result[f"{terms}-{mode}"] = {
            "loss": {k: [one_logs[k], logs[k]] for k in one_logs},
            "weights": len(weights),
            "weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, one_weights)),
            "weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, initial)),
        }
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def runs():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("terms, logged, weights", [
    ("rkd", {"loss", "task_loss", "rkd_distance", "rkd_angle"}, 4),
    ("mixed", {"loss", "task_loss", "rkd_angle", "fitnet"}, 5),  # the student's and the FitNet regressor's
    ("labelled", {"loss", "task_loss", "rkd_angle", "dkd"}, 4),
])
def test_two_replicas_give_the_single_device_loss_and_weights(runs, terms, logged, weights):
    assert runs["replicas"] == 2
    run = runs[f"{terms}-True"]
    assert set(run["loss"]) == logged and run["weights"] == weights
    for name, (single, mirrored) in run["loss"].items():
        assert abs(single - mirrored) <= 1e-5 * max(1.0, abs(single)), (name, single, mirrored)
    assert run["weight_change"] > 1e-2  # the step moved the weights, visibly
    assert run["weight_diff"] <= 1e-5, run


@pytest.mark.parametrize("terms", ["rkd", "mixed", "labelled"])
def test_per_replica_relations_differ_from_the_global_batch(runs, terms):
    """With the option off each replica sees 16 rows: the relations, and the step, change."""
    run = runs[f"{terms}-False"]
    single, per_replica = run["loss"]["rkd_angle"]
    assert abs(single - per_replica) > 1e-3, run
    assert run["weight_diff"] > 1e-4, run
