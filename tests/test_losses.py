"""RKD losses against a float64 NumPy version of the official direct form."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
import rkd_keras
from rkd_keras import RKDAngle, RKDDistance, rkd_angle, rkd_distance

LOSSES = {"distance": (rkd_distance, reference.rkd_distance), "angle": (rkd_angle, reference.rkd_angle)}


def _pair(rng, n, teacher_shape, student_shape):
    teacher = rng.normal(size=(n, *teacher_shape)).astype(np.float32)
    student = rng.normal(size=(n, *student_shape)).astype(np.float32)
    return teacher, student


def _near_duplicates(rng, n, dim):
    """Half the rows are copies of the other half moved by 1e-4 (unit spread)."""
    base = rng.normal(size=(n // 2, dim))
    return np.concatenate([base, base + 1e-4 * rng.normal(size=base.shape)]).astype(np.float32)


def _cases():
    rng = np.random.default_rng(1)
    cases = {f"random_n{n}": _pair(rng, n, (48,), (20,)) for n in (2, 3, 16, 64)}
    cases["rank4"] = _pair(rng, 16, (4, 4, 3), (2, 2, 5))
    base_t, base_s = _pair(rng, 8, (32,), (8,))
    cases["exact_duplicates"] = (np.concatenate([base_t, base_t]), np.concatenate([base_s, base_s]))
    cases["near_duplicate_teacher"] = (_near_duplicates(rng, 64, 64), rng.normal(size=(64, 16)).astype(np.float32))
    cases["near_duplicate_student"] = (rng.normal(size=(64, 64)).astype(np.float32), _near_duplicates(rng, 64, 64))
    cases["near_duplicate_both"] = (_near_duplicates(rng, 64, 64), _near_duplicates(rng, 64, 16))
    offset_t = 1e3 / np.sqrt(64) * rng.choice([-1.0, 1.0], size=64)
    offset_s = 1e3 / np.sqrt(16) * rng.choice([-1.0, 1.0], size=16)
    cases["large_norm"] = (
        (offset_t + rng.normal(size=(32, 64))).astype(np.float32),
        (offset_s + rng.normal(size=(32, 16))).astype(np.float32),
    )
    return cases


CASES = _cases()


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("case", CASES)
def test_matches_official_formula_in_float64(kind, case):
    ours, official = LOSSES[kind]
    teacher, student = CASES[case]
    expected = official(teacher, student)
    value = float(ours(teacher, student))
    # atol only matters for N = 2 angles, whose exact value is 0.
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("kind", LOSSES)
def test_delta_is_the_huber_threshold(kind):
    ours, official = LOSSES[kind]
    teacher, student = CASES["random_n16"]
    np.testing.assert_allclose(
        float(ours(teacher, student, delta=0.05)), official(teacher, student, delta=0.05), rtol=1e-5
    )


@pytest.mark.parametrize("kind", LOSSES)
def test_gradient_matches_float64_direct_form(kind, rng):
    """Student gradient equals the autodiff gradient of the direct form in float64."""
    ours = LOSSES[kind][0]
    teacher, student = _pair(rng, 12, (10,), (6,))

    def direct(t, s):
        def distances(x):
            d = tf.sqrt(tf.maximum(tf.reduce_sum((x[:, None] - x[None]) ** 2, -1), 1e-12))
            d = tf.linalg.set_diag(d, tf.zeros(len(teacher), tf.float64))
            return d / (tf.reduce_sum(d) / (len(teacher) * (len(teacher) - 1)))

        def angles(x):
            unit = tf.math.l2_normalize(x[None] - x[:, None], axis=2)
            return tf.matmul(unit, unit, transpose_b=True)

        relation = distances if kind == "distance" else angles
        return tf.reduce_mean(keras.losses.huber(tf.reshape(relation(t), [-1]), tf.reshape(relation(s), [-1])))

    s32 = tf.constant(student)
    s64 = tf.constant(student, tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s32, s64])
        value = ours(teacher, s32)
        expected = direct(tf.constant(teacher, tf.float64), s64)
    np.testing.assert_allclose(
        tape.gradient(value, s32).numpy(), tape.gradient(expected, s64).numpy(), rtol=1e-4, atol=1e-7
    )


def test_distance_is_zero_for_a_scaled_student(rng):
    teacher = rng.normal(size=(32, 16)).astype(np.float32)
    assert float(rkd_distance(teacher, 3.7 * teacher)) < 1e-10
    assert float(rkd_distance(teacher, rng.normal(size=(32, 16)))) > 1e-3


def test_angle_is_zero_for_a_rotated_translated_scaled_student(rng):
    teacher = rng.normal(size=(32, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    student = 2.5 * teacher @ rotation + rng.normal(size=16)
    assert float(rkd_angle(teacher.astype(np.float32), student.astype(np.float32))) < 1e-10
    assert float(rkd_angle(teacher.astype(np.float32), rng.normal(size=(32, 16)))) > 1e-3


def test_teacher_side_gets_no_gradient(rng):
    teacher = tf.constant(rng.normal(size=(8, 5)), tf.float32)
    student = tf.constant(rng.normal(size=(8, 3)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([teacher, student])
        total = rkd_distance(teacher, student) + rkd_angle(teacher, student)
    assert tape.gradient(total, teacher) is None
    assert float(tf.reduce_max(tf.abs(tape.gradient(total, student)))) > 0


@pytest.mark.parametrize("kind", LOSSES)
def test_batch_of_one_is_zero_not_nan(kind):
    value = LOSSES[kind][0](np.ones((1, 4), np.float32), np.zeros((1, 2), np.float32))
    assert float(value) == 0.0


def _degenerate_inputs():
    rng = np.random.default_rng(2)
    teacher_row, student_row = rng.normal(size=(1, 6)), rng.normal(size=(1, 3))
    return {
        "n1": (rng.normal(size=(1, 6)), rng.normal(size=(1, 3))),
        "n2": (rng.normal(size=(2, 6)), rng.normal(size=(2, 3))),
        "duplicate_rows": (
            np.concatenate([teacher_row, teacher_row, rng.normal(size=(3, 6))]),
            np.concatenate([student_row, student_row, rng.normal(size=(3, 3))]),
        ),
        "all_equal_rows": (np.repeat(teacher_row, 6, 0), np.repeat(student_row, 6, 0)),
    }


def _gradients(fn, teacher, student, mode):
    def compute(t, s):
        with tf.GradientTape() as tape:
            tape.watch(s)
            value = fn(t, s)
        return value, tape.gradient(value, s)

    if mode == "tf_function":
        compute = tf.function(compute)
    elif mode == "jit":
        compute = tf.function(compute, jit_compile=True)
    return compute(teacher, student)


@pytest.mark.parametrize("mode", ["eager", "tf_function", "jit"])
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("case", ["n1", "n2", "duplicate_rows", "all_equal_rows"])
def test_loss_and_gradient_are_finite_on_degenerate_batches(case, kind, mode):
    teacher, student = (tf.constant(np.asarray(a), tf.float32) for a in _degenerate_inputs()[case])
    value, gradient = _gradients(LOSSES[kind][0], teacher, student, mode)
    assert np.isfinite(value.numpy())
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("mode", ["eager", "tf_function", "jit"])
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_run_in_float32(dtype, kind, mode, rng):
    ours, official = LOSSES[kind]
    teacher = tf.constant(rng.normal(size=(16, 8)), dtype)
    student = tf.constant(rng.normal(size=(16, 4)), dtype)
    value, gradient = _gradients(ours, teacher, student, mode)
    assert value.dtype == tf.float32
    assert np.all(np.isfinite(gradient.numpy().astype(np.float32)))
    # Same value as the float64 formula on the (rounded) half-precision inputs.
    expected = official(tf.cast(teacher, tf.float32).numpy(), tf.cast(student, tf.float32).numpy())
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", LOSSES)
def test_different_batch_sizes_raise_value_error(kind):
    with pytest.raises(ValueError, match="received 4 teacher rows and 3 student rows"):
        LOSSES[kind][0](np.ones((4, 2), np.float32), np.ones((3, 2), np.float32))


def test_integer_embeddings_are_refused():
    with pytest.raises(TypeError, match="floating point"):
        rkd_distance(np.ones((4, 2), np.int32), np.ones((4, 2), np.float32))


@pytest.mark.parametrize("loss_class, fn", [(RKDDistance, rkd_distance), (RKDAngle, rkd_angle)])
def test_loss_classes_forward_to_functions_and_round_trip(loss_class, fn, rng):
    teacher, student = _pair(rng, 10, (7,), (3,))
    loss = loss_class(delta=0.5)
    np.testing.assert_allclose(float(loss(teacher, student)), float(fn(teacher, student, delta=0.5)), rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is loss_class and restored.get_config()["delta"] == 0.5
    np.testing.assert_allclose(float(restored(teacher, student)), float(loss(teacher, student)), rtol=1e-6)


def test_public_api():
    assert rkd_keras.losses.rkd_angle is rkd_angle
    assert {"Distiller", "rkd_distance", "rkd_angle", "RKDDistance", "RKDAngle", "losses"} <= set(rkd_keras.__all__)


def _angle_loss_and_gradient(teacher, student, chunk_size, mode):
    return _gradients(lambda t, s: rkd_angle(t, s, chunk_size=chunk_size), teacher, student, mode)


@pytest.mark.parametrize("mode", ["eager", "tf_function", "jit"])
def test_angle_chunks_give_the_unchunked_loss_and_gradient(mode, rng):
    """37 vertices in chunks of 1, 5 (last chunk partial), 16, all, more than all, automatic."""
    teacher = tf.constant(rng.normal(size=(37, 12)), tf.float32)
    student = tf.constant(rng.normal(size=(37, 5)), tf.float32)
    whole_value, whole_gradient = _angle_loss_and_gradient(teacher, student, 37, "eager")
    np.testing.assert_allclose(float(whole_value), reference.rkd_angle(teacher.numpy(), student.numpy()), rtol=1e-5)
    for chunk_size in (1, 5, 16, 100, None):
        value, gradient = _angle_loss_and_gradient(teacher, student, chunk_size, mode)
        np.testing.assert_allclose(float(value), float(whole_value), rtol=1e-6)
        np.testing.assert_allclose(gradient.numpy(), whole_gradient.numpy(), rtol=1e-5, atol=1e-9)


def test_angle_automatic_chunks_split_a_large_batch_exactly(rng):
    """N = 240: about 4M angles per chunk means 72 vertices, so 4 chunks, the last partial."""
    teacher = rng.normal(size=(240, 16)).astype(np.float32)
    student = rng.normal(size=(240, 6)).astype(np.float32)
    value, gradient = _angle_loss_and_gradient(tf.constant(teacher), tf.constant(student), None, "tf_function")
    np.testing.assert_allclose(float(value), reference.rkd_angle(teacher, student), rtol=1e-5)
    _, whole_gradient = _angle_loss_and_gradient(tf.constant(teacher), tf.constant(student), 240, "eager")
    np.testing.assert_allclose(gradient.numpy(), whole_gradient.numpy(), rtol=1e-5, atol=1e-10)


def test_angle_chunks_work_with_an_unknown_batch_size(rng):
    teacher = rng.normal(size=(20, 8)).astype(np.float32)
    student = rng.normal(size=(20, 4)).astype(np.float32)
    spec = tf.TensorSpec((None, None), tf.float32)
    loss = tf.function(lambda t, s: rkd_angle(t, s, chunk_size=6), input_signature=[spec, spec])
    np.testing.assert_allclose(float(loss(teacher, student)), reference.rkd_angle(teacher, student), rtol=1e-5)


def test_angle_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        rkd_angle(np.ones((4, 2), np.float32), np.ones((4, 2), np.float32), chunk_size=0)


def test_angle_loss_class_keeps_its_chunk_size(rng):
    teacher, student = _pair(rng, 10, (7,), (3,))
    restored = keras.losses.deserialize(keras.losses.serialize(RKDAngle(chunk_size=3)))
    assert restored.get_config()["chunk_size"] == 3
    np.testing.assert_allclose(float(restored(teacher, student)), reference.rkd_angle(teacher, student), rtol=1e-5)
