"""The `keras.losses.Loss` wrappers, `losses.get` and the `LOSSES` registry."""

import keras
import numpy as np
import pytest

import rkd_keras
from loss_cases import DISTILLATION, NEW, as_float32
from rkd_keras import losses

RELATIONAL = {
    "rkd_distance", "rkd_angle", "dark_rank", "similarity_preserving", "pkt", "correlation_congruence", "dist_kd",
    "relaxed_contrastive", "triplet_loss", "prototypical_loss",
}
PER_EXAMPLE = {"hinton_kd", "dkd", "attention_transfer", "fitnet"}

# Parameters other than the defaults, for each wrapper with parameters.
PARAMETERS = {
    "rkd_distance": {"delta": 0.5, "eps": 1e-10},
    "rkd_angle": {"delta": 0.5, "eps": 1e-10, "chunk_size": 3},
    "dark_rank": {"alpha": 2.0, "beta": 1.5, "list_length": 2},
    "similarity_preserving": {},
    "pkt": {"eps": 1e-4},
    "correlation_congruence": {"gamma": 0.2, "order": 3},
    "dist_kd": {"beta": 0.5, "gamma": 2.0, "temperature": 3.0},
    "hinton_kd": {"temperature": 2.5},
    "relaxed_contrastive": {"sigma": 0.5, "delta": 1.5},
    "attention_transfer": {},
    "fitnet": {},
}


def test_registry_holds_every_loss_of_the_package_by_its_function_name():
    assert set(losses.LOSSES) == RELATIONAL | PER_EXAMPLE
    for name, wrapper in losses.LOSSES.items():
        assert getattr(losses, name).__name__ == name and name in losses.__all__ and wrapper.__name__ in losses.__all__
    for name in NEW:
        assert getattr(rkd_keras, name) is getattr(losses, name)
        assert {name, losses.LOSSES[name].__name__} <= set(rkd_keras.__all__)


def test_get_gives_the_wrapper_of_every_name():
    for name, wrapper in losses.LOSSES.items():
        loss = losses.get(name)
        assert type(loss) is wrapper and loss.name == name
        assert isinstance(loss, losses.LossWrapper) and loss.fn is getattr(losses, name)


def test_wrappers_say_whether_they_compare_relations_or_examples():
    assert {name for name, wrapper in losses.LOSSES.items() if wrapper.relational} == RELATIONAL
    assert {name for name, wrapper in losses.LOSSES.items() if wrapper.uses_regressor} == {"fitnet"}
    assert {name for name, wrapper in losses.LOSSES.items() if wrapper.uses_labels} == {"dkd"}


def test_fitnet_without_its_regressor_is_the_plain_mse_and_saves_so():
    teacher, student = as_float32(*(np.random.default_rng(2).normal(size=(2, 6, 16))))
    loss = losses.FitNet(regressor=False)
    assert not loss.uses_regressor and losses.FitNet().uses_regressor
    np.testing.assert_allclose(float(loss(teacher, student)), np.mean((student - teacher) ** 2.0), rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert not restored.uses_regressor and restored.get_config()["regressor"] is False
    assert "regressor" not in losses.FitNet().get_config()  # configs written before the option are unchanged
    with pytest.raises(ValueError, match="regressor must be True or False, received 'no'"):
        losses.FitNet(regressor="no")


def test_round_trip_keeps_parameters_and_values():
    for name, (fn, _, inputs) in DISTILLATION.items():
        teacher, student = as_float32(*inputs(np.random.default_rng(0), 6))
        params = PARAMETERS[name]
        loss = losses.LOSSES[name](**params)
        expected = float(fn(teacher, student, **params))
        np.testing.assert_allclose(float(loss(teacher, student)), expected, rtol=1e-6, err_msg=name)
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(restored) is type(loss) and restored.name == name
        assert {key: restored.get_config()[key] for key in params} == params, name
        np.testing.assert_allclose(float(restored(teacher, student)), expected, rtol=1e-6, err_msg=name)


def test_triplet_wrapper_round_trip_keeps_its_sampling():
    loss = losses.TripletLoss(margin=0.3, sampling="batch_hard")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.get_config()["margin"] == 0.3 and restored.get_config()["sampling"] == "batch_hard"
    labels, embeddings = np.repeat(np.arange(3), 2), np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(float(restored(labels, embeddings)), float(loss(labels, embeddings)), rtol=1e-6)


BAD_PARAMETERS = [
    ("hinton_kd", {"temperature": 0.0}, "temperature must be a finite number > 0, received 0.0"),
    ("dist_kd", {"temperature": -1.0}, "temperature must be a finite number > 0"),
    ("dist_kd", {"beta": -0.5}, "beta must be a finite number >= 0"),
    ("pkt", {"eps": 0.0}, "eps must be a finite number > 0"),
    ("correlation_congruence", {"gamma": float("nan")}, "gamma must be a finite number > 0, received nan"),
    ("correlation_congruence", {"order": 0}, "order must be an integer >= 1, received 0"),
    ("correlation_congruence", {"order": 2.5}, "order must be an integer >= 1"),
    ("dark_rank", {"list_length": 0}, "list_length must be an integer >= 1"),
    ("dark_rank", {"alpha": -3.0}, "alpha must be a finite number > 0"),
    ("dark_rank", {"beta": "3"}, "beta must be a finite number > 0, received '3'"),
    ("relaxed_contrastive", {"sigma": 0.0}, "sigma must be a finite number > 0, received 0.0"),
    ("relaxed_contrastive", {"delta": -1.0}, "delta must be a finite number > 0"),
    ("rkd_distance", {"delta": 0.0}, "delta must be a finite number > 0, received 0.0"),
    ("rkd_distance", {"eps": -1e-12}, "eps must be a finite number > 0, received -1e-12"),
    ("rkd_angle", {"delta": float("inf")}, "delta must be a finite number > 0, received inf"),
    ("rkd_angle", {"eps": 0.0}, "eps must be a finite number > 0, received 0.0"),
]


def test_bad_parameters_are_refused_by_the_function_and_the_wrapper():
    for name, params, message in BAD_PARAMETERS:
        fn, _, inputs = DISTILLATION[name]
        with pytest.raises(ValueError, match=message):
            fn(*as_float32(*inputs(np.random.default_rng(2), 4)), **params)
        with pytest.raises(ValueError, match=message):
            losses.LOSSES[name](**params)


def test_get_refuses_unknown_names_listing_the_known_ones():
    with pytest.raises(ValueError, match=(
        r"Unknown loss 'hinton'; choose a distillation loss \(rkd_distance, .*hinton_kd.*\) or a loss of labels "
        r"and embeddings \(triplet_loss, prototypical_loss\)\."
    )):
        losses.get("hinton")


def test_get_wraps_a_function_and_passes_a_loss_through():
    def squared_mean_gap(teacher, student):
        return keras.ops.square(keras.ops.mean(teacher) - keras.ops.mean(student))

    wrapped = losses.get(squared_mean_gap)
    assert wrapped.name == "squared_mean_gap" and wrapped.relational
    assert float(wrapped(np.full((2, 3), 2.0, np.float32), np.zeros((2, 5), np.float32))) == 4.0
    loss = losses.HintonKD(temperature=2.0)
    assert losses.get(loss) is loss
    with pytest.raises(TypeError, match="received int"):
        losses.get(3)
