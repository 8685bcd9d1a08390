"""The distillation losses against float64 NumPy ports of their reference code (tests/reference.py).

Values to a relative error ≤ 1e-5, student gradients to central finite
differences of the float64 port (rtol 1e-4), then what each method adds.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from loss_cases import NEW, VARIANTS, as_float32, features, logits, maps
from rkd_keras import losses


def _value_and_gradient(fn, teacher, student, **params):
    student = tf.constant(student)
    with tf.GradientTape() as tape:
        tape.watch(student)
        value = fn(tf.constant(teacher), student, **params)
    return value, tape.gradient(value, student).numpy()


def numeric_gradient(port, teacher, student, step=1e-5, **params):
    """Central finite differences of the float64 port with respect to the student."""
    student = np.asarray(student, np.float64)
    gradient = np.zeros_like(student)
    for index in np.ndindex(student.shape):
        plus, minus = student.copy(), student.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (port(teacher, plus, **params) - port(teacher, minus, **params)) / (2 * step)
    return gradient


# The losses of (teacher, student) and the logit losses that read labels or standardize.
CASES = {**NEW, **VARIANTS}


def assert_gradient_close(gradient, expected):
    # rtol 1e-4 elementwise; entries far below the largest are held to 1e-6 of it (float32 sums).
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("name", CASES)
def test_value_matches_the_float64_port_of_its_reference(name):
    fn, port, inputs = CASES[name]
    for n in (2, 16, 64):
        teacher, student = as_float32(*inputs(np.random.default_rng(n), n))
        value = fn(teacher, student)
        assert value.shape == () and value.dtype == "float32"
        np.testing.assert_allclose(float(value), port(teacher, student), rtol=1e-5, err_msg=f"N = {n}")


PARAMETERS = {
    "hinton_kd": [{"temperature": 1.0}, {"temperature": 8.0}],
    "dist_kd": [{"beta": 2.0, "gamma": 0.5, "temperature": 4.0}],
    "pkt": [{"eps": 1e-3}],
    "correlation_congruence": [{"gamma": 0.1, "order": 1}, {"gamma": 0.8, "order": 4}],
    "dark_rank": [{"alpha": 1.0, "beta": 2.0, "list_length": 3}, {"list_length": 1}],
    "relaxed_contrastive": [{"sigma": 0.25}, {"delta": 2.0}],
    "dkd": [{"alpha": 2.0}, {"beta": 1.0}, {"temperature": 1.0}],
    "dkd_standardized": [{"temperature": 2.0}],
    "hinton_kd_standardized": [{"temperature": 2.0}],
}


def test_parameters_mean_what_the_reference_means():
    for name, settings in PARAMETERS.items():
        fn, port, inputs = CASES[name]
        teacher, student = as_float32(*inputs(np.random.default_rng(3), 16))
        default = float(fn(teacher, student))
        for params in settings:
            value = float(fn(teacher, student, **params))
            np.testing.assert_allclose(value, port(teacher, student, **params), rtol=1e-5, err_msg=f"{name} {params}")
            assert abs(value - default) > 1e-4 * abs(value), (name, params)  # the parameter changed the loss


@pytest.mark.parametrize("name", CASES)
def test_student_gradient_matches_the_float64_port(name):
    fn, port, inputs = CASES[name]
    for n in (2, 16):
        teacher, student = inputs(np.random.default_rng(10 + n), n)
        if name == "attention_transfer":  # 16 positions × 3 channels per example: keep the differences few
            teacher, student = teacher[:, :2, :2], student[:, :2, :2]
        teacher, student = as_float32(teacher, student)
        _, gradient = _value_and_gradient(fn, teacher, student)
        assert_gradient_close(gradient, numeric_gradient(port, teacher, student))


def test_teacher_gets_no_gradient():
    rng = np.random.default_rng(4)
    for name, (fn, _, inputs) in CASES.items():
        teacher, student = (tf.constant(a) for a in as_float32(*inputs(rng, 6)))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([teacher, student])
            value = fn(teacher, student)
        assert tape.gradient(value, teacher) is None, name
        assert float(tf.reduce_max(tf.abs(tape.gradient(value, student)))) > 0, name


def test_hinton_kd_keeps_tiny_probabilities_exact():
    """A student sure of the wrong class gives the teacher's class 2e-9: Keras's kl_divergence clips it at 1e-7."""
    teacher = np.array([[10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]], np.float32)
    student = np.array([[0.0, 20.0, 0.0, 0.0], [0.0, 0.0, 0.0, 21.0]], np.float32)
    expected = reference.hinton_kd(teacher, student, temperature=1.0)
    np.testing.assert_allclose(float(losses.hinton_kd(teacher, student, temperature=1.0)), expected, rtol=1e-5)
    clipped = float(keras.ops.mean(keras.losses.kl_divergence(tf.nn.softmax(teacher), tf.nn.softmax(student))))
    assert abs(clipped - expected) > 0.1 * expected


@pytest.mark.parametrize("fn", [losses.hinton_kd, losses.dist_kd])
def test_logit_losses_refuse_different_classes(fn):
    with pytest.raises(ValueError, match=r"same classes.*teacher \(4, 10\) and student \(4, 5\)"):
        fn(np.zeros((4, 10), np.float32), np.zeros((4, 5), np.float32))


def test_dark_rank_with_a_list_longer_than_the_batch_ranks_the_n_minus_1_others():
    teacher, student = as_float32(*features(np.random.default_rng(5), 5))
    value = float(losses.dark_rank(teacher, student, list_length=10))
    np.testing.assert_allclose(value, reference.dark_rank(teacher, student, list_length=10), rtol=1e-5)
    np.testing.assert_allclose(value, float(losses.dark_rank(teacher, student, list_length=4)), rtol=1e-6)
    assert abs(value - float(losses.dark_rank(teacher, student, list_length=3))) > 1e-3


def test_dark_rank_works_with_an_unknown_batch_size():
    teacher, student = as_float32(*features(np.random.default_rng(6), 9))
    specs = [tf.TensorSpec((None, 24), tf.float32), tf.TensorSpec((None, 10), tf.float32)]
    loss = tf.function(lambda t, s: losses.dark_rank(t, s, list_length=12), input_signature=specs)
    np.testing.assert_allclose(
        float(loss(teacher, student)), reference.dark_rank(teacher, student, list_length=12), rtol=1e-5
    )


def test_dark_rank_of_duplicate_rows_has_the_ports_finite_gradient():
    """Two pairs of duplicate student rows: the clamp before the square root keeps the slope finite."""
    teacher, student = features(np.random.default_rng(7), 6)
    student[3], student[5] = student[0], student[1]
    teacher, student = as_float32(teacher, student)
    value, gradient = _value_and_gradient(losses.dark_rank, teacher, student, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(float(value), reference.dark_rank(teacher, student, alpha=1.0, beta=1.0), rtol=1e-5)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0


def test_attention_transfer_refuses_different_spatial_sizes_naming_both_shapes():
    teacher, student = as_float32(*maps(np.random.default_rng(8), 2))
    with pytest.raises(ValueError, match=r"same spatial size.*teacher \(2, 4, 4, 6\) and student \(2, 2, 2, 3\)"):
        losses.attention_transfer(teacher, student[:, :2, :2])


def test_attention_transfer_refuses_vectors():
    with pytest.raises(ValueError, match=r"rank ≥ 3.*\(4, 8\)"):
        losses.attention_transfer(np.ones((4, 8), np.float32), np.ones((4, 8), np.float32))


def test_relational_losses_flatten_feature_maps():
    teacher, student = as_float32(*maps(np.random.default_rng(9), 8))
    for name in ("similarity_preserving", "pkt", "correlation_congruence", "dark_rank", "relaxed_contrastive"):
        fn, port, _ = NEW[name]
        np.testing.assert_allclose(float(fn(teacher, student)), port(teacher, student), rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("shape", [(6, 5), (6, 3, 3, 5)])
def test_fitnet_with_its_regressor_is_the_official_transform_and_mse(shape):
    """HintRegressor's kernel is the official 1×1 convolution's weight, transposed to channels last."""
    rng = np.random.default_rng(11)
    student = rng.normal(size=shape).astype(np.float32)
    teacher = rng.normal(size=(*shape[:-1], 7)).astype(np.float32)
    regressor = losses.HintRegressor(7)
    regressor.build(student.shape)
    regressor.kernel.assign(rng.normal(size=(5, 7)).astype(np.float32))
    weight = regressor.kernel.numpy().T  # nn.Conv2d(5, 7, 1).weight[:, :, 0, 0]

    student_tensor = tf.constant(student)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(student_tensor)
        value = losses.fitnet(teacher, regressor(student_tensor))
    np.testing.assert_allclose(float(value), reference.fitnet(teacher, student, weight), rtol=1e-5)
    assert_gradient_close(
        tape.gradient(value, student_tensor).numpy(),
        numeric_gradient(lambda t, s: reference.fitnet(t, s, weight), teacher, student),
    )
    kernel_gradient = numeric_gradient(lambda t, w: reference.fitnet(t, student, w.T), teacher, regressor.kernel.numpy())
    assert_gradient_close(tape.gradient(value, regressor.kernel).numpy(), kernel_gradient)


def test_hint_regressor_starts_as_the_official_uniform_init_without_bias():
    regressor = losses.HintRegressor(64)
    regressor.build((None, 8, 8, 128))
    kernel = regressor.kernel.numpy()
    assert len(regressor.weights) == 1 and kernel.shape == (128, 64)
    assert np.abs(kernel).max() <= 0.005
    # uniform(−0.005, 0.005): standard deviation 0.01/√12 ≈ 0.00289, not a normal's tails.
    np.testing.assert_allclose(kernel.std(), 0.01 / np.sqrt(12), rtol=0.05)
    assert np.abs(kernel).max() > 0.0049


def test_fitnet_refuses_features_the_regressor_did_not_map():
    with pytest.raises(ValueError, match=r"same shape.*teacher \(2, 4, 4, 8\) and regressed student \(2, 4, 4, 5\)"):
        losses.fitnet(np.ones((2, 4, 4, 8), np.float32), np.ones((2, 4, 4, 5), np.float32))


def test_logits_are_per_example_and_hinton_kd_is_the_mean_over_examples():
    teacher, student = as_float32(*logits(np.random.default_rng(12), 6))
    per_example = [float(losses.hinton_kd(teacher[i : i + 1], student[i : i + 1])) for i in range(6)]
    np.testing.assert_allclose(float(losses.hinton_kd(teacher, student)), np.mean(per_example), rtol=1e-6)
