"""The prototypical loss against its float64 port of Protonet.loss (jakesnell/prototypical-networks)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
import rkd_keras
from rkd_keras import losses


def _episode(rng, ways, shots, queries, dim=6):
    """A P×K batch as `pk_batches` gives it (class by class), and its support and query arrays."""
    support = rng.normal(size=(ways, shots, dim))
    query = rng.normal(size=(ways, queries, dim)) + 0.5
    batch = np.concatenate([support, query], axis=1).reshape(ways * (shots + queries), dim)
    labels = np.repeat(rng.permutation(100)[:ways], shots + queries)
    return labels, batch.astype(np.float32), support, query


@pytest.mark.parametrize("ways, shots, queries", [(5, 1, 15), (3, 5, 2), (20, 1, 1)])
def test_matches_the_official_loss_on_a_pk_batch(ways, shots, queries):
    labels, batch, support, query = _episode(np.random.default_rng(ways), ways, shots, queries)
    value = float(losses.prototypical_loss(labels, batch, shots=shots))
    np.testing.assert_allclose(value, reference.prototypical_loss(support, query), rtol=1e-5)


def test_the_batch_order_only_decides_which_items_support():
    """Items shuffled: each class's first `shots` items in the new order support, as the port given those."""
    rng = np.random.default_rng(0)
    labels, batch, _, _ = _episode(rng, 4, 2, 3)
    order = rng.permutation(len(labels))
    labels, batch = labels[order], batch[order]
    classes = list(dict.fromkeys(labels))
    grouped = np.stack([batch[labels == c] for c in classes]).astype(np.float64)
    value = float(losses.prototypical_loss(labels, batch, shots=2))
    np.testing.assert_allclose(value, reference.prototypical_loss(grouped[:, :2], grouped[:, 2:]), rtol=1e-5)


def test_gradient_matches_central_differences_of_the_port():
    rng = np.random.default_rng(1)
    labels, batch, _, _ = _episode(rng, 3, 2, 2, dim=3)
    x = tf.Variable(batch)
    with tf.GradientTape() as tape:
        value = losses.prototypical_loss(labels, x, shots=2)
    gradient = tape.gradient(value, x).numpy()

    def port(flat):
        grouped = flat.reshape(3, 4, 3)
        return reference.prototypical_loss(grouped[:, :2], grouped[:, 2:])

    expected, step, base = np.zeros(batch.size), 1e-6, batch.astype(np.float64).ravel()
    for i in range(batch.size):
        up, down = base.copy(), base.copy()
        up[i] += step
        down[i] -= step
        expected[i] = (port(up) - port(down)) / (2 * step)
    np.testing.assert_allclose(gradient.ravel(), expected, atol=1e-5)


def test_a_class_without_queries_is_a_distractor_prototype():
    """Class 7's single item (shots=1) is only a prototype: the loss of class 0's query changes, nothing is added."""
    labels = np.array([0, 0, 7])
    embeddings = np.array([[0.0], [1.0], [1.5]], np.float32)
    # query 1.0: distances 1 to prototype 0, 0.25 to prototype 1.5
    expected = -np.log(np.exp(-1.0) / (np.exp(-1.0) + np.exp(-0.25)))
    np.testing.assert_allclose(float(losses.prototypical_loss(labels, embeddings)), expected, rtol=1e-6)


def test_no_query_gives_0_an_empty_batch_0_and_a_non_finite_input_nan():
    assert float(losses.prototypical_loss(np.array([0, 1]), np.ones((2, 3), np.float32))) == 0.0
    assert float(losses.prototypical_loss(np.zeros((0,), np.int64), np.zeros((0, 3), np.float32))) == 0.0
    embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    embeddings[3, 1] = np.nan
    assert np.isnan(float(losses.prototypical_loss(np.array([0, 0, 1, 1]), embeddings)))


def test_the_wrapper_round_trips_its_shots_and_refuses_bad_ones():
    labels, batch, support, query = _episode(np.random.default_rng(2), 4, 3, 2)
    loss = rkd_keras.PrototypicalLoss(shots=3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is losses.PrototypicalLoss and restored.get_config()["shots"] == 3
    np.testing.assert_allclose(float(restored(labels, batch)), reference.prototypical_loss(support, query), rtol=1e-5)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="shots must be an integer >= 1"):
            losses.PrototypicalLoss(shots=bad)
        with pytest.raises(ValueError, match="shots must be an integer >= 1"):
            losses.prototypical_loss(labels, batch, shots=bad)
