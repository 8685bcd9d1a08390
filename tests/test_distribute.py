"""Global-batch relations under tf.distribute: two logical CPU devices equal one device."""

import json
import subprocess
import sys

import pytest

# Logical devices must be configured before TensorFlow starts, so the runs
# happen in a fresh process. One SGD step on one global batch of 32, with a
# task loss and weight decay, so every term's gradient scale is checked.
CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from rkd_keras import Distiller

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 12)).astype(np.float32)
y = rng.normal(size=(32, 8)).astype(np.float32)


def mlp(hidden, out, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    h = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2))(inputs)
    return keras.Model(inputs, keras.layers.Dense(out)(h))


def step(strategy, global_batch_relations):
    with strategy.scope():
        distiller = Distiller(mlp(32, 16, 1), mlp(16, 8, 2), angle_weight=2.0,
                              global_batch_relations=global_batch_relations)
        distiller.compile(keras.optimizers.SGD(0.5), loss="mse")
    logs = distiller.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
    return {k: v[0] for k, v in logs.items()}, [w.copy() for w in distiller.student.get_weights()]


one_logs, one_weights = step(tf.distribute.OneDeviceStrategy("/cpu:0"), True)
# One strategy for both runs: a second one would reuse its collective keys.
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {"replicas": mirrored.num_replicas_in_sync}
for mode in (True, False):
    logs, weights = step(mirrored, mode)
    result[str(mode)] = {
        "loss": {k: [one_logs[k], logs[k]] for k in one_logs},
        "weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, one_weights)),
        "weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, mlp(16, 8, 2).get_weights())),
    }
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def runs():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_replicas_give_the_single_device_loss_and_weights(runs):
    assert runs["replicas"] == 2
    run = runs["True"]
    for name, (single, mirrored) in run["loss"].items():
        assert abs(single - mirrored) <= 1e-5 * max(1.0, abs(single)), (name, single, mirrored)
    assert run["weight_change"] > 1e-2  # the step moved the weights, visibly
    assert run["weight_diff"] <= 1e-5, run


def test_per_replica_relations_differ_from_the_global_batch(runs):
    """With the option off each replica sees 16 rows: the relations, and the step, change."""
    run = runs["False"]
    single, per_replica = run["loss"]["rkd_angle"]
    assert abs(single - per_replica) > 1e-3, run
    assert run["weight_diff"] > 1e-4, run
