"""Triplet loss against NumPy references, and distance-weighted sampling weights."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from rkd_keras import TripletLoss, triplet_loss
from rkd_keras.losses.triplet import _distance_weights


def _distances(e):
    e = np.asarray(e, np.float64)
    return np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))


def numpy_all(labels, e, margin):
    d = _distances(e)
    losses = []
    for a in range(len(e)):
        for p in range(len(e)):
            for n in range(len(e)):
                if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
                    losses.append(max(d[a, p] - d[a, n] + margin, 0.0))
    return np.mean(losses)


def numpy_batch_hard(labels, e, margin):
    d = _distances(e)
    losses = []
    for a in range(len(e)):
        pos = [d[a, p] for p in range(len(e)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(e)) if labels[n] != labels[a]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return np.mean(losses)


def numpy_official_weights(labels, e, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """lenscloth/RKD metric/batchsampler.py DistanceWeighted, log clipped as Wu et al."""
    e = np.asarray(e, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    n, dim = e.shape
    dist = np.maximum(np.sqrt(_distances(e) ** 2 + np.eye(n)), cutoff)
    log_weight = (2.0 - dim) * np.log(dist) - ((dim - 3) / 2) * np.log(np.maximum(1.0 - 0.25 * dist**2, 1e-8))
    weight = np.exp(log_weight - log_weight.max(axis=1, keepdims=True))
    negatives = labels[:, None] != labels[None, :]
    weight = weight * (negatives & (dist < nonzero_loss_cutoff))
    weight = weight + (weight.sum(axis=1, keepdims=True) == 0) * negatives
    return weight / weight.sum(axis=1, keepdims=True)


@pytest.fixture
def batch(rng):
    labels = np.repeat(np.arange(4), 4)
    return labels, rng.normal(size=(16, 8)).astype(np.float32)


@pytest.mark.parametrize("sampling, reference", [("all", numpy_all), ("batch_hard", numpy_batch_hard)])
@pytest.mark.parametrize("margin", [0.2, 5.0])
def test_matches_numpy_reference(batch, sampling, reference, margin):
    labels, embeddings = batch
    value = float(triplet_loss(labels, embeddings, margin=margin, sampling=sampling))
    np.testing.assert_allclose(value, reference(labels, embeddings, margin), rtol=1e-5)


def test_distance_weights_match_the_official_sampler(rng):
    labels = np.repeat(np.arange(6), 5)
    embeddings = rng.normal(size=(30, 16)).astype(np.float32)
    weights = _distance_weights(tf.constant(labels), tf.constant(embeddings), 0.5, 1.4).numpy()
    expected = numpy_official_weights(labels, embeddings)
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-7)
    assert np.all(weights[labels[:, None] == labels[None, :]] == 0)  # never a positive


def test_distance_weighted_loss_is_an_average_of_sampled_triplets(batch):
    """Every sampled triplet's loss lies between the easiest and hardest negative's."""
    labels, embeddings = batch
    d = _distances(embeddings)
    low = high = 0.0
    count = 0
    for a in range(16):
        neg = d[a][labels != labels[a]]
        for p in range(16):
            if p != a and labels[p] == labels[a]:
                low += max(d[a, p] - neg.max() + 5.0, 0)
                high += max(d[a, p] - neg.min() + 5.0, 0)
                count += 1
    value = float(triplet_loss(labels, embeddings, margin=5.0, seed=1))
    assert low / count - 1e-5 <= value <= high / count + 1e-5
    assert low < high


def test_no_valid_triplet_gives_zero(rng):
    embeddings = rng.normal(size=(4, 3)).astype(np.float32)
    for sampling in ("all", "batch_hard", "distance_weighted"):
        assert float(triplet_loss(np.zeros(4), embeddings, sampling=sampling)) == 0.0
        assert float(triplet_loss(np.arange(4), embeddings, sampling=sampling)) == 0.0


def test_loss_class_trains_with_fit_and_round_trips(rng):
    labels = np.repeat(np.arange(8), 8)
    x = (np.repeat(rng.normal(size=(8, 10)), 8, 0) + 0.5 * rng.normal(size=(64, 10))).astype("float32")
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.UnitNormalization()(keras.layers.Dense(8)(inputs)))
    loss = TripletLoss(margin=0.2, sampling="batch_hard")
    model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    history = model.fit(x, labels, batch_size=64, epochs=20, shuffle=False, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, TripletLoss) and restored.get_config()["sampling"] == "batch_hard"


@pytest.mark.parametrize("arguments, message", [
    ({"sampling": "hard"}, "Unknown sampling 'hard'; choose one of distance_weighted, batch_hard, all."),
    ({"margin": -0.1}, "margin must be a finite number >= 0, received -0.1."),
    ({"margin": float("nan")}, "margin must be a finite number >= 0, received nan."),
    ({"cutoff": 0.0}, "cutoff must be a finite number > 0, received 0.0."),
    ({"nonzero_loss_cutoff": -1.4}, "nonzero_loss_cutoff must be a finite number > 0, received -1.4."),
])
def test_arguments_out_of_range_are_refused_by_the_function_and_the_wrapper(batch, arguments, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        triplet_loss(*batch, **arguments)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TripletLoss(**arguments)
    assert float(triplet_loss(*batch, margin=0.0, sampling="all")) >= 0.0  # a margin of 0 is allowed
