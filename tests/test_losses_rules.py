"""The rules every loss of rkd_keras.losses keeps (the package docstring states them).

Degenerate batches give finite losses and gradients; a non-finite input gives
a NaN loss, never a plausible number; an empty batch gives 0; half-precision
inputs give the float32 result of their rounded values; the new losses use
`keras.ops` only.
"""

import ast
import inspect

import numpy as np
import pytest
import tensorflow as tf

from loss_cases import DISTILLATION, NEW, VARIANTS, as_float32
from rkd_keras import losses
from rkd_keras.losses import base, features, logits, relational

FINITE_ON_DEGENERATE = {**NEW, **VARIANTS, "fitnet": DISTILLATION["fitnet"]}  # RKD: tests/test_losses.py
# Every loss, and the logit losses that read labels (of each batch's rows, `loss_cases.labels_of`) or standardize.
EVERY = {**DISTILLATION, **VARIANTS}


def _degenerate(inputs, case):
    rng = np.random.default_rng(0)
    if case in ("n1", "n2"):
        return as_float32(*inputs(rng, int(case[1])))
    teacher, student = inputs(rng, 5)
    if case == "duplicate_rows":
        teacher[3], student[3], teacher[4], student[4] = teacher[0], student[0], teacher[1], student[1]
    elif case == "all_equal_rows":
        teacher[:], student[:] = teacher[0], student[0]
    elif case == "zero_rows":  # dead ReLU units: features (and maps) of 0
        teacher[2:], student[2:] = 0.0, 0.0
    return as_float32(teacher, student)


def _loss_and_gradient(fn, mode):
    def compute(teacher, student):
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = fn(teacher, student)
        return value, tape.gradient(value, student)

    return compute if mode == "eager" else tf.function(compute, jit_compile=mode == "jit")


# Tests loop over the losses: each test is one rule, and pytest's per-test set-up costs ~0.3 s.


@pytest.mark.parametrize("mode", ["eager", "tf_function", "jit"])
def test_loss_and_gradient_are_finite_on_degenerate_batches(mode):
    for name, (fn, _, inputs) in FINITE_ON_DEGENERATE.items():
        compute = _loss_and_gradient(fn, mode)
        for case in ("n1", "n2", "duplicate_rows", "all_equal_rows", "zero_rows"):
            teacher, student = (tf.constant(a) for a in _degenerate(inputs, case))
            value, gradient = compute(teacher, student)
            assert np.isfinite(value.numpy()), (name, case)
            assert np.all(np.isfinite(gradient.numpy())), (name, case)


def test_a_batch_of_one_gives_0_for_relational_losses():
    """One example has no relation to another (the official HardDarkRank fails, SP and PKT give 0)."""
    rng = np.random.default_rng(1)
    for name in ("similarity_preserving", "pkt", "dark_rank", "relaxed_contrastive"):
        fn, _, inputs = NEW[name]
        assert float(fn(*as_float32(*inputs(rng, 1)))) == 0.0, name


def test_non_finite_inputs_give_nan():
    for name, (fn, _, inputs) in EVERY.items():
        graph = tf.function(fn)
        for side in (0, 1):
            for bad in (np.nan, np.inf, -np.inf):
                pair = [a.copy() for a in as_float32(*inputs(np.random.default_rng(2), 6))]
                pair[side].flat[7] = bad
                assert np.isnan(float(fn(*pair))), (name, side, bad)
                assert np.isnan(float(graph(*pair))), (name, side, bad)


def test_non_finite_embeddings_give_a_nan_triplet_loss():
    embeddings = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    labels = np.repeat(np.arange(4), 2)
    for sampling in losses.TRIPLET_SAMPLINGS:
        for bad in (np.nan, np.inf):
            broken = embeddings.copy()
            broken[5, 1] = bad
            assert np.isnan(float(losses.triplet_loss(labels, broken, sampling=sampling, seed=0))), (sampling, bad)


def test_an_empty_batch_gives_0():
    """A replica's share of a short last batch under tf.distribute can be empty: 0, as Keras's losses give."""
    for name, (fn, _, inputs) in EVERY.items():
        teacher, student = as_float32(*inputs(np.random.default_rng(4), 0))
        value, gradient = _loss_and_gradient(fn, "eager")(tf.constant(teacher), tf.constant(student))
        assert float(value) == 0.0 and gradient.shape == student.shape, name
        specs = [tf.TensorSpec((None, *a.shape[1:]), tf.float32) for a in (teacher, student)]
        value, gradient = tf.function(_loss_and_gradient(fn, "eager"), input_signature=specs)(teacher, student)
        assert float(value) == 0.0 and gradient.shape == student.shape, name


def test_an_empty_batch_gives_a_triplet_loss_of_0():
    for sampling in losses.TRIPLET_SAMPLINGS:
        empty = np.zeros((0, 4), np.float32)
        assert float(losses.triplet_loss(np.zeros((0,), np.int64), empty, sampling=sampling)) == 0.0, sampling


def test_half_precision_inputs_give_the_float32_result_of_their_rounded_values():
    for name, (fn, port, inputs) in FINITE_ON_DEGENERATE.items():
        teacher, student = inputs(np.random.default_rng(5), 16)
        for dtype in ("float16", "bfloat16"):
            half_teacher, half_student = tf.constant(teacher, dtype), tf.constant(student, dtype)
            value, gradient = _loss_and_gradient(fn, "eager")(half_teacher, half_student)
            assert value.dtype == tf.float32, (name, dtype)
            assert np.all(np.isfinite(tf.cast(gradient, tf.float32).numpy())), (name, dtype)
            rounded = (tf.cast(half_teacher, tf.float32).numpy(), tf.cast(half_student, tf.float32).numpy())
            np.testing.assert_allclose(float(value), port(*rounded), rtol=1e-5, err_msg=f"{name} {dtype}")


def test_integer_inputs_are_refused_with_the_cast_to_use():
    for name, (fn, _, inputs) in {**NEW, **VARIANTS}.items():
        teacher, student = inputs(np.random.default_rng(6), 4)
        with pytest.raises(TypeError, match=r"floating point, received dtype int32.*keras\.ops\.cast"):
            fn(teacher.astype(np.int32), student.astype(np.float32))


def test_different_batch_sizes_are_refused():
    for name, (fn, _, inputs) in {**NEW, **VARIANTS}.items():
        teacher, student = as_float32(*inputs(np.random.default_rng(7), 4))
        with pytest.raises(ValueError, match="received 4 teacher rows and 3 student rows"):
            fn(teacher, student[:3])


def _names_used(tree):
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return imported | {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


@pytest.mark.parametrize("module", [logits, relational, features], ids=lambda m: m.__name__)
def test_new_losses_use_keras_ops_only(module):
    """They will run on JAX and PyTorch: no TensorFlow in them, nor in the helpers they take from base."""
    tree = ast.parse(inspect.getsource(module))
    assert not {"tensorflow", "tf"} & _names_used(tree)
    helpers = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == base.__name__ for alias in node.names}
    assert helpers
    for helper in helpers:
        assert "tf" not in _names_used(ast.parse(inspect.getsource(getattr(base, helper)))), helper
