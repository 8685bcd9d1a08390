"""`few_shot_accuracy`: prototypes and nearest-prototype queries over seeded episodes (Snell et al. 2017)."""

import numpy as np
import pytest

import rkd_keras
from rkd_keras import few_shot_accuracy


def _clusters(classes, per_class, spread, dim=8, seed=0):
    """`classes` Gaussian clusters of `per_class` points, centres far apart relative to `spread`."""
    rng = np.random.default_rng(seed)
    centres = 100.0 * rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_separated_clusters_give_accuracy_1_with_no_spread():
    embeddings, labels = _clusters(12, 20, spread=0.1)
    result = few_shot_accuracy(embeddings, labels, ways=5, shots=1, queries=15, episodes=200)
    assert result == (1.0, 0.0)
    assert rkd_keras.few_shot_accuracy is few_shot_accuracy


def test_random_embeddings_score_chance_within_the_interval():
    """1/ways lies in accuracy ± half-width, for the default seed and for at least 17 of 20 seeds (95 % intervals)."""
    rng = np.random.default_rng(1)
    embeddings, labels = rng.normal(size=(40 * 25, 16)), np.repeat(np.arange(40), 25)
    for ways in (5, 20):
        accuracy, half_width = few_shot_accuracy(embeddings, labels, ways=ways, shots=1, queries=5)
        assert abs(accuracy - 1 / ways) <= half_width, (ways, accuracy, half_width)
        assert 0.0 < half_width < 0.05
    covered = [
        abs(result.accuracy - 0.2) <= result.half_width
        for result in (few_shot_accuracy(embeddings, labels, shots=5, queries=5, episodes=200, seed=s) for s in range(20))
    ]
    assert sum(covered) >= 17, covered


def test_the_interval_shrinks_as_one_over_the_square_root_of_the_episodes():
    embeddings, labels = _clusters(20, 20, spread=120.0)  # overlapping: episodes differ
    widths = [few_shot_accuracy(embeddings, labels, episodes=n).half_width for n in (250, 1000, 4000)]
    np.testing.assert_allclose(np.array(widths[1:]) / widths[:-1], [0.5, 0.5], rtol=0.15)


def test_more_shots_give_better_prototypes():
    embeddings, labels = _clusters(20, 20, spread=120.0)
    one, five = (few_shot_accuracy(embeddings, labels, shots=shots, queries=10).accuracy for shots in (1, 5))
    assert five > one + 0.05, (one, five)


def test_the_same_seed_draws_the_same_episodes():
    embeddings, labels = _clusters(20, 20, spread=120.0)
    assert few_shot_accuracy(embeddings, labels, seed=3) == few_shot_accuracy(embeddings, labels, seed=3)
    assert few_shot_accuracy(embeddings, labels, seed=3) != few_shot_accuracy(embeddings, labels, seed=4)


def test_prototypes_are_support_means_and_distances_squared_euclidean():
    """2-way 2-shot by hand: supports 0, 2 (prototype 1) and 3, 9 (prototype 6); query 3.4 is nearer 1 than 6."""
    embeddings = np.array([[0.0], [2.0], [3.4], [3.0], [9.0], [6.1]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # Every episode holds both classes; which two items of a class support varies, so compare with brute force.
    accuracy, _ = few_shot_accuracy(embeddings, labels, ways=2, shots=2, queries=1, episodes=300, seed=0)
    expected = []
    rng = np.random.default_rng(0)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    for _ in range(300):
        chosen = rng.choice(2, 2, replace=False)
        drawn = [rng.choice(by_class[c], 3, replace=False) for c in chosen]
        prototypes = [embeddings[d[:2], 0].mean() for d in drawn]
        hits = [np.argmin([(embeddings[d[2], 0] - p) ** 2 for p in prototypes]) == i for i, d in enumerate(drawn)]
        expected.append(np.mean(hits))
    assert accuracy == pytest.approx(np.mean(expected))
    assert 0.0 < accuracy < 1.0


def test_too_few_classes_or_items_are_refused_with_counts():
    embeddings, labels = _clusters(6, 10, spread=1.0)
    with pytest.raises(ValueError, match=r"needs 20 classes of at least 16 items each; 0 of the 6 classes"):
        few_shot_accuracy(embeddings, labels, ways=20)
    with pytest.raises(ValueError, match=r"needs 5 classes of at least 11 items each; 0 of the 6"):
        few_shot_accuracy(embeddings, labels, shots=1, queries=10)
    with pytest.raises(ValueError, match="ways must be an integer >= 2, received 1"):
        few_shot_accuracy(embeddings, labels, ways=1)
    with pytest.raises(ValueError, match="episodes must be an integer >= 2"):
        few_shot_accuracy(embeddings, labels, queries=5, episodes=1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        few_shot_accuracy(np.where(labels[:, None] == 0, np.nan, embeddings), labels, queries=5)
    with pytest.raises(ValueError, match=r"embeddings of shape \(60, 8\) and 59 labels"):
        few_shot_accuracy(embeddings, labels[:-1])
