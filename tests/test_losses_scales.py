"""Every loss at extreme but finite input scales (×1e-20 … ×1e20, float32) against its float64 port.

Inputs are the loss's usual cases multiplied by a scale (×1e-20, 1e-10, 1e-5,
1e5, 1e10, 1e19, 1e20), on both sides, on the teacher only, or on the student
only. The expected value is the float64 port of
the reference code on the same float32 inputs, rounded to float32: the loss
gives it to a relative 1e-4, or, where that value is beyond float32's range,
inf or NaN (never a finite number). Where the port itself or float32 cannot
resolve the value, the test says why and holds the loss to what can be resolved.
"""

import functools

import numpy as np
import pytest

import reference
from loss_cases import DISTILLATION, as_float32
from rkd_keras import losses

SCALES = (1e-20, 1e-10, 1e-5, 1e5, 1e10, 1e19, 1e20)
SIDES = ("both", "teacher", "student")


def _port(name):
    port = DISTILLATION[name][1]
    if name == "rkd_angle":  # differences shorter than sqrt(eps) = 1e-6 have no direction (a documented difference)
        return functools.partial(reference.rkd_angle, no_direction_below=1e-6)
    if name == "correlation_congruence":  # the port's kernels cancel 1 + 1e-20 − 1 to 0 in float64
        return functools.partial(reference.correlation_congruence, constant=0)
    return port


def _tolerance(name, side, scale):
    """(rtol, atol) of a case: 1e-4 relative, except where float32 (or the port) cannot resolve the value."""
    if name == "hinton_kd" and side == "both" and scale < 1:
        # Logits ×1e-10: the KL is ~1e-20, below float32's rounding of its terms (T² · 1e-7); the float64 port
        # gives its own rounding (7e-15 at ×1e-20). Held to 0 within that rounding.
        return 0.0, 16 * 1e-6
    if name == "dist_kd" and side != "both" and scale < 1:
        # Softmax of logits ×1e-10 is 0.1 to float32's precision: one side's Pearson correlations are 0 (loss 2),
        # where the float64 port still resolves them to 1e-3 through its eps of 1e-8.
        return 2e-3, 0.0
    if name == "pkt" and side == "both" and scale < 1:
        # Features ×1e-10 are below eps = 1e-7: the probabilities are uniform to 1e-5, their float32 rounding 1e-8.
        return 1e-2, 1e-18
    return 1e-4, float(np.finfo(np.float32).tiny)


def _scaled(name, side, scale):
    fn, _, inputs = DISTILLATION[name]
    teacher, student = as_float32(*inputs(np.random.default_rng(0), 16))
    if side in ("both", "teacher"):
        teacher = teacher * np.float32(scale)
    if side in ("both", "student"):
        student = student * np.float32(scale)
    return fn, teacher, student


@pytest.mark.parametrize("name", DISTILLATION)
def test_loss_at_extreme_scales_is_the_float64_value_or_nan(name):
    for side in SIDES:
        for scale in SCALES:
            fn, teacher, student = _scaled(name, side, scale)
            with np.errstate(over="ignore", invalid="ignore"):
                expected = np.float32(_port(name)(teacher.astype(np.float64), student.astype(np.float64)))
            value = float(fn(teacher, student))
            case = f"{name}, {side} ×{scale:g}: {value} against the port's {expected}"
            if np.isinf(expected):
                assert not np.isfinite(value), case  # beyond float32: inf or NaN, never a finite number
            else:
                rtol, atol = _tolerance(name, side, scale)
                assert abs(value - expected) <= rtol * abs(expected) + atol, case


# Values seen before the fix, in float32 (issue 19, case 5): each is now the float64 value.
BEFORE = [
    ("similarity_preserving", "both", 1e10, 0.0),
    ("attention_transfer", "both", 1e10, 0.0),
    ("correlation_congruence", "both", 1e5, float("inf")),
    ("pkt", "both", 1e19, 6.759e-05),
    ("dark_rank", "teacher", 1e18, 438.1),
    ("rkd_distance", "both", 1e19, float("nan")),
    ("rkd_angle", "both", 1e19, float("nan")),
    ("fitnet", "both", 1e18, float("inf")),
]


@pytest.mark.parametrize("name, side, scale, before", BEFORE)
def test_the_issues_cases_give_the_float64_value(name, side, scale, before):
    fn, teacher, student = _scaled(name, side, scale)
    expected = _port(name)(teacher.astype(np.float64), student.astype(np.float64))
    value = float(fn(teacher, student))
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    assert not np.isclose(value, before, rtol=1e-3, equal_nan=True)


@pytest.mark.parametrize("name", ["similarity_preserving", "attention_transfer", "pkt", "rkd_distance", "rkd_angle"])
def test_gradient_of_a_scale_invariant_loss_at_1e19_is_its_gradient_at_1_over_1e19(name):
    # loss(c·s) = loss(s) (above the eps), so its gradient at c·s is the gradient at s divided by c.
    import tensorflow as tf

    fn, teacher, student = _scaled(name, "both", 1.0)

    def gradient(scale):
        scaled = tf.constant(student * np.float32(scale))
        with tf.GradientTape() as tape:
            tape.watch(scaled)
            value = fn(tf.constant(teacher * np.float32(scale)), scaled)
        return tape.gradient(value, scaled).numpy()

    expected = gradient(1.0)
    np.testing.assert_allclose(gradient(1e19) * 1e19, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("wrapper", [losses.RKDDistance, losses.RKDAngle])
def test_rkd_on_l2_normalized_rows_of_1e20_is_rkd_on_the_rows_of_1(wrapper):
    # The wrappers' l2_normalize squared rows ×1e20 to inf, which normalized every row to 0.
    _, teacher, student = _scaled("rkd_distance", "both", 1.0)
    loss = wrapper(l2_normalize=True)
    expected = float(loss(teacher, student))
    assert expected > 1e-3
    np.testing.assert_allclose(float(loss(teacher * np.float32(1e20), student * np.float32(1e20))), expected, rtol=1e-5)


def test_correlation_congruence_beyond_float32_is_nan_or_inf_not_0():
    # Features ×1e10: inner products² of 1e41 overflow float32, and the loss (1.4e40) is beyond its range.
    fn, teacher, student = _scaled("correlation_congruence", "both", 1e10)
    assert reference.correlation_congruence(teacher.astype(np.float64), student.astype(np.float64)) > 3.4e38
    assert np.isnan(float(fn(teacher, student)))


def test_a_norm_of_an_overflowed_tensor_is_not_0():
    # The norm hid NaN (inf − inf in a kernel) as 0; now it keeps it, and the norm of 1e20-sized rows is finite.
    from rkd_keras.losses.base import norm

    rows = np.array([[3e20, 4e20], [np.nan, 0.0], [0.0, 0.0], [3e-30, 4e-30]], np.float32)
    np.testing.assert_allclose(np.asarray(norm(rows, axis=1))[[0, 3]], [5e20, 5e-30], rtol=1e-6)
    assert np.isnan(np.asarray(norm(rows, axis=1))[1]) and float(norm(rows, axis=1)[2]) == 0.0


def test_triplet_loss_at_extreme_scales_is_the_float64_value():
    # The margin is not scaled, so at ×1e20 every triplet's hinge is its distance gap: the port's float64 value.
    from test_triplet import numpy_all, numpy_batch_hard

    labels = np.repeat(np.arange(4), 4)
    embeddings = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    for scale in SCALES:
        scaled = embeddings * np.float32(scale)
        for sampling, port in (("all", numpy_all), ("batch_hard", numpy_batch_hard)):
            value = float(losses.triplet_loss(labels, scaled, sampling=sampling, margin=0.2))
            np.testing.assert_allclose(value, port(labels, scaled, 0.2), rtol=1e-4, err_msg=f"{sampling} ×{scale:g}")


def test_distance_weights_at_extreme_scales_are_those_of_unit_rows():
    # The sampler normalizes the rows: ×1e20 (whose squares overflowed to inf, rsqrt 0) samples as ×1.
    # (Rows ×1e-10 stay below the normalization's eps of 1e-12, as tf.math.l2_normalize's do.)
    import tensorflow as tf
    from test_triplet import numpy_official_weights

    from rkd_keras.losses.triplet import _distance_weights

    labels = np.repeat(np.arange(6), 5)
    embeddings = np.random.default_rng(2).normal(size=(30, 16)).astype(np.float32)
    for scale in (1e10, 1e20):
        scaled = embeddings * np.float32(scale)
        weights = _distance_weights(tf.constant(labels), tf.constant(scaled), 0.5, 1.4).numpy()
        np.testing.assert_allclose(weights, numpy_official_weights(labels, scaled), rtol=1e-4, atol=1e-7)
