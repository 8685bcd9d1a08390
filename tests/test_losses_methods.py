"""The methods since RKD, against float64 NumPy ports of their authors' code (tests/reference.py).

The relaxed contrastive loss (tjddus9597/LabelRelaxation-CVPR21), DKD
(megvii-research/mdistiller) and the logit standardization of Hinton's KD and
DKD (sunshangquan/logit-standardization-KD) on several widths and batch sizes,
near-duplicate rows and large norms: values to 1e-4 relative, student
gradients to central differences of the port within 1e-3 of their largest
entry, and no gradient into the teacher.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from loss_cases import as_float32
from rkd_keras import losses


def _value_and_gradients(fn, teacher, student, **params):
    teacher, student = tf.constant(teacher), tf.constant(student)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([teacher, student])
        value = fn(teacher, student, **params)
    return float(value), tape.gradient(value, student).numpy(), tape.gradient(value, teacher)


def _numeric_gradient(port, teacher, student, step=1e-6):
    student = np.asarray(student, np.float64)
    gradient = np.zeros_like(student)
    for index in np.ndindex(student.shape):
        plus, minus = student.copy(), student.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (port(teacher, plus) - port(teacher, minus)) / (2 * step)
    return gradient


def _check(fn, port, teacher, student, what, step=1e-6, atol=0.0):
    teacher, student = as_float32(teacher, student)
    value, gradient, teacher_gradient = _value_and_gradients(fn, teacher, student)
    np.testing.assert_allclose(value, port(teacher, student), rtol=1e-4, atol=atol, err_msg=what)
    # Central differences of the port taken at a step relative to the student's scale.
    expected = _numeric_gradient(port, teacher, student, step * max(1.0, float(np.abs(student).max())))
    scale = float(np.abs(expected).max())
    assert scale > 0, what
    np.testing.assert_allclose(gradient, expected, rtol=0, atol=1e-3 * scale, err_msg=what)
    assert teacher_gradient is None, what


def _near_duplicates(rng, n, dim, scale=1.0):
    """Half the rows are copies of the other half moved by 1e-4 of their spread."""
    base = scale * rng.normal(size=(n // 2, dim))
    return np.concatenate([base, base + 1e-4 * scale * rng.normal(size=base.shape)])


RELAXED_CASES = {
    "512 to 64, N = 32": lambda rng: (rng.normal(size=(32, 512)), rng.normal(size=(32, 64))),
    "24 to 10, N = 8": lambda rng: (rng.normal(size=(8, 24)), rng.normal(size=(8, 10))),
    "the same width, N = 3": lambda rng: (rng.normal(size=(3, 16)), rng.normal(size=(3, 16))),
    "near-duplicate student rows": lambda rng: (rng.normal(size=(16, 32)), _near_duplicates(rng, 16, 8)),
    "near-duplicate teacher rows": lambda rng: (_near_duplicates(rng, 16, 32), rng.normal(size=(16, 8))),
    "large norms (1e3 + spread 1)": lambda rng: (1e3 + rng.normal(size=(12, 16)), 1e3 + rng.normal(size=(12, 8))),
    "large scale (×1e4)": lambda rng: (1e4 * rng.normal(size=(12, 16)), 1e4 * rng.normal(size=(12, 8))),
}


@pytest.mark.parametrize("case", RELAXED_CASES)
def test_relaxed_contrastive_is_the_official_loss(case):
    teacher, student = RELAXED_CASES[case](np.random.default_rng(0))
    _check(losses.relaxed_contrastive, reference.relaxed_contrastive, teacher, student, case)


def test_relaxed_contrastive_normalises_the_teacher_but_not_the_student():
    teacher, student = as_float32(*RELAXED_CASES["24 to 10, N = 8"](np.random.default_rng(1)))
    value = float(losses.relaxed_contrastive(teacher, student))
    np.testing.assert_allclose(float(losses.relaxed_contrastive(5.0 * teacher, student)), value, rtol=1e-6)
    # The student's distances are divided by their row means: a scale changes nothing either, a shift
    # of one row does.
    np.testing.assert_allclose(float(losses.relaxed_contrastive(teacher, 5.0 * student)), value, rtol=1e-5)
    moved = student.copy()
    moved[0] += 1.0
    assert abs(float(losses.relaxed_contrastive(teacher, moved)) - value) > 1e-3


def test_relaxed_contrastive_of_a_batch_of_one_is_0_with_a_zero_gradient():
    value, gradient, _ = _value_and_gradients(losses.relaxed_contrastive, *as_float32(np.ones((1, 4)), np.ones((1, 3))))
    assert value == 0.0 and np.array_equal(gradient, np.zeros((1, 3)))


def _logits(rng, n, classes, scale):
    return scale * rng.normal(size=(n, classes)), scale * rng.normal(size=(n, classes))


LOGIT_CASES = {
    "10 classes, N = 8": (8, 10, 3.0),
    "100 classes, N = 4": (4, 100, 3.0),
    "2 classes, N = 6": (6, 2, 3.0),
    "confident logits (×30)": (6, 10, 30.0),
    "near-equal logits (×1e-3)": (6, 10, 1e-3),
}
# The z-scores of two classes are ±1/√2 whatever the logits: nothing to differentiate.
STANDARDIZED_CASES = [case for case in LOGIT_CASES if case != "2 classes, N = 6"]
# Near-equal logits give a loss of ~1e-5, a difference of log-probabilities near −2.3 that float32 rounds to
# ~1e-7 each, times T² · β = 128: the value holds to 4e-6 absolute there (its gradient, to 1e-3 as everywhere).
NEAR_EQUAL_ATOL = 4e-6


def _with_labels(fn, labels, **params):
    return lambda teacher, student: fn(teacher, student, labels, **params)


def _dkd_case(case, standardize):
    n, classes, scale = LOGIT_CASES[case]
    rng = np.random.default_rng(2)
    teacher, student = _logits(rng, n, classes, scale)
    labels = rng.integers(0, classes, n)
    _check(_with_labels(losses.dkd, labels, standardize=standardize),
           _with_labels(reference.dkd, labels, standardize=standardize), teacher, student, case,
           atol=NEAR_EQUAL_ATOL if scale < 1e-2 else 0.0)


@pytest.mark.parametrize("case", LOGIT_CASES)
def test_dkd_is_mdistillers_dkd_loss(case):
    _dkd_case(case, standardize=False)


@pytest.mark.parametrize("case", STANDARDIZED_CASES)
def test_standardized_dkd_is_the_authors_dkd_loss(case):
    _dkd_case(case, standardize=True)


@pytest.mark.parametrize("case", STANDARDIZED_CASES)
def test_standardized_hinton_kd_is_the_authors_kd_loss(case):
    n, classes, scale = LOGIT_CASES[case]
    teacher, student = _logits(np.random.default_rng(3), n, classes, scale)
    _check(lambda t, s: losses.hinton_kd(t, s, temperature=2.0, standardize=True),
           lambda t, s: reference.hinton_kd_standardized(t, s, temperature=2.0), teacher, student, case)


def test_dkd_reads_labels_as_indices_of_shape_n_or_n_by_1():
    teacher, student = as_float32(*_logits(np.random.default_rng(4), 5, 10, 3.0))
    labels = np.array([3, 1, 4, 1, 5])
    expected = reference.dkd(teacher, student, labels)
    for given in (labels, labels[:, None], labels.astype(np.int64), tf.constant(labels, tf.int32)):
        np.testing.assert_allclose(float(losses.dkd(teacher, student, given)), expected, rtol=1e-5)


def test_dkd_depends_on_the_labels():
    teacher, student = as_float32(*_logits(np.random.default_rng(5), 5, 10, 3.0))
    one = float(losses.dkd(teacher, student, np.zeros(5, np.int32)))
    other = float(losses.dkd(teacher, student, np.ones(5, np.int32)))
    assert abs(one - other) > 1e-2 * one


def test_dkd_refuses_one_hot_labels_other_batches_and_a_single_class():
    teacher, student = as_float32(*_logits(np.random.default_rng(6), 4, 10, 1.0))
    with pytest.raises(ValueError, match=r"class indices of shape \(batch,\).*received shape \(4, 10\).*argmax"):
        losses.dkd(teacher, student, np.eye(10)[[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="labels hold 3 rows for 4 rows of logits"):
        losses.dkd(teacher, student, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="needs ≥ 2 classes, received 1"):
        losses.dkd(teacher[:, :1], student[:, :1], np.zeros(4, np.int32))


def test_dkd_wrapper_without_labels_says_how_to_give_them():
    logits = np.zeros((2, 3), np.float32)
    loss = losses.DKD(beta=2.0)
    assert loss.uses_labels and not loss.relational
    with pytest.raises(ValueError, match=r"'dkd' reads the class labels: call it as loss.call\(teacher, student, labels\)"):
        loss(logits, logits)
    teacher, student = as_float32(*_logits(np.random.default_rng(7), 4, 5, 2.0))
    np.testing.assert_allclose(float(loss.call(teacher, student, np.array([0, 1, 2, 3]))),
                               reference.dkd(teacher, student, [0, 1, 2, 3], beta=2.0), rtol=1e-5)


def _hinton_kd_before_standardize(teacher_logits, student_logits, temperature=4.0):
    """The body of `hinton_kd` as it was before `standardize` (rkd_keras 0.2.0), kept to compare bit for bit."""
    from rkd_keras.losses.base import guard
    from rkd_keras.losses.logits import _logit_pair

    teacher, student = _logit_pair(teacher_logits, student_logits)
    teacher_log_probs = keras.ops.log_softmax(teacher / temperature, axis=-1)
    student_log_probs = keras.ops.log_softmax(student / temperature, axis=-1)
    kl = keras.ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    rows = keras.ops.cast(keras.ops.shape(student)[0], "float32")
    return guard(temperature**2 * keras.ops.sum(kl) / rows, teacher, student)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_hinton_kd_without_standardize_is_bit_identical_to_before(mode):
    def both(teacher, student):
        results = []
        for fn in (lambda t, s: losses.hinton_kd(t, s, temperature=3.0, standardize=False),
                   lambda t, s: losses.hinton_kd(t, s, temperature=3.0),
                   lambda t, s: _hinton_kd_before_standardize(t, s, temperature=3.0)):
            with tf.GradientTape() as tape:
                tape.watch(student)
                value = fn(teacher, student)
            results.append((value, tape.gradient(value, student)))
        return results

    run = both if mode == "eager" else tf.function(both, jit_compile=True)
    teacher, student = (tf.constant(a) for a in as_float32(*_logits(np.random.default_rng(8), 16, 10, 3.0)))
    (value, gradient), *others = run(teacher, student)
    for other_value, other_gradient in others:
        assert float(value) == float(other_value)
        assert np.array_equal(gradient.numpy(), other_gradient.numpy())


def test_standardization_divides_by_classes_minus_1():
    """Bessel's correction, as torch.std: keras.ops.std (ddof 0) would scale the z-scores by √(C/(C−1))."""
    teacher, student = as_float32(*_logits(np.random.default_rng(9), 6, 10, 3.0))
    value = float(losses.hinton_kd(teacher, student, temperature=2.0, standardize=True))

    def z_score(x, ddof):
        return (x - x.mean(1, keepdims=True)) / (1e-7 + x.std(1, ddof=ddof, keepdims=True))

    population = reference.hinton_kd(z_score(teacher.astype(np.float64), 0), z_score(student.astype(np.float64), 0), 2.0)
    np.testing.assert_allclose(value, reference.hinton_kd(z_score(teacher, 1), z_score(student, 1), 2.0), rtol=1e-5)
    assert abs(value - population) > 0.05 * value


def test_standardized_losses_have_finite_gradients_on_constant_logits():
    """A constant row has std 0 (the authors' torch.std gives NaN gradients there)."""
    constant = np.full((3, 10), 2.0, np.float32)
    for fn in (lambda t, s: losses.hinton_kd(t, s, standardize=True),
               lambda t, s: losses.dkd(t, s, np.array([0, 1, 2]), standardize=True)):
        value, gradient, _ = _value_and_gradients(fn, constant, constant)
        assert np.isfinite(value) and np.all(np.isfinite(gradient))


def test_new_wrappers_round_trip_and_keep_old_configs():
    for loss in (losses.RelaxedContrastive(sigma=0.5, delta=2.0), losses.DKD(alpha=0.5, beta=4.0, standardize=True),
                 losses.HintonKD(temperature=2.0, standardize=True)):
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert "standardize" not in losses.HintonKD().get_config()  # saved files of the plain KD are unchanged
    assert losses.HintonKD(standardize=True).get_config()["standardize"] is True
    with pytest.raises(ValueError, match="standardize must be True or False, received 'yes'"):
        losses.HintonKD(standardize="yes")
