"""keras-tuner search of the RKD loss weights on validation Recall@1."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rkd_keras import pk_batches
from rkd_keras.tuning import RKDHyperModel, search_loss_weights


def mlp(width, out, name):
    inputs = keras.Input((12,))
    return keras.Model(inputs, keras.layers.Dense(out)(keras.layers.Dense(width, activation="relu")(inputs)), name=name)


@pytest.fixture
def problem(rng):
    centers = 3.0 * rng.normal(size=(10, 12))
    labels = np.repeat(np.arange(10), 30)
    x = (centers[labels] + rng.normal(size=(300, 12))).astype("float32")
    train = pk_batches(tf.data.Dataset.from_tensor_slices((x[::2], labels[::2])), 5, 6, seed=0)
    teacher = mlp(64, 16, "teacher")
    return teacher, train, (x[1::2], labels[1::2])


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_random_search_completes_every_trial_and_shares_the_teacher(problem, tmp_path):
    teacher, train, validation = problem
    hypermodel = RKDHyperModel(teacher, lambda: mlp(8, 4, "student"))
    best_hp, best_student, tuner = search_loss_weights(
        hypermodel, train, validation, max_trials=3, epochs=2, directory=str(tmp_path), project_name="a", verbose=0
    )
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 3 and all(t.status == "COMPLETED" for t in trials)
    scores = [t.score for t in trials]
    assert all(0.0 <= s <= 1.0 for s in scores)
    best_trial = max(trials, key=lambda t: t.score)
    assert best_hp.values == best_trial.hyperparameters.values
    assert best_student.count_params() == mlp(8, 4, "x").count_params()
    assert tuner.get_best_models(1)[0].teacher is teacher
    # A second search reuses the very same teacher object.
    _, _, second = search_loss_weights(
        hypermodel, train, validation, max_trials=1, epochs=1, directory=str(tmp_path), project_name="b", verbose=0
    )
    assert second.get_best_models(1)[0].teacher is teacher


def test_trial_checkpoints_hold_the_student_only(problem, tmp_path):
    teacher, train, validation = problem
    hypermodel = RKDHyperModel(teacher, lambda: mlp(8, 4, "student"))
    search_loss_weights(hypermodel, train, validation, max_trials=1, epochs=1, directory=str(tmp_path), verbose=0)
    checkpoints = list(tmp_path.rglob("checkpoint.weights.h5"))
    assert checkpoints
    student_only = mlp(8, 4, "student")
    student_only.load_weights(checkpoints[0])  # loads: it holds exactly the student's weights


def test_search_raises_when_every_trial_fails(problem, tmp_path, monkeypatch):
    teacher, train, validation = problem
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if tensorboard were not installed
    hypermodel = RKDHyperModel(teacher, lambda: mlp(8, 4, "student"))
    with pytest.raises(RuntimeError, match="No trial of the search completed"):
        search_loss_weights(hypermodel, train, validation, max_trials=2, epochs=1, directory=str(tmp_path), verbose=0)


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband"])
def test_bayesian_optimization_and_hyperband_run(problem, tmp_path, tuner):
    teacher, train, validation = problem
    hypermodel = RKDHyperModel(teacher, lambda: mlp(8, 4, "student"))
    options = {"max_trials": 2} if tuner == "bayesian" else {"epochs": 2, "hyperband_iterations": 1, "factor": 3}
    _, _, search = search_loss_weights(
        hypermodel, train, validation, tuner=tuner, directory=str(tmp_path), verbose=0, **options
    )
    trials = list(search.oracle.trials.values())
    assert len(trials) >= 2 and all(t.status == "COMPLETED" for t in trials)
