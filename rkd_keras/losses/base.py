"""What every loss of `rkd_keras.losses` shares: input checks, the rules for non-finite inputs and
empty batches, norms with finite gradients, and the batch's Gram matrix in float64.

Written with `keras.ops`, so every loss runs on TensorFlow, JAX and PyTorch.
"""

import functools
import math

import keras

from rkd_keras import checks


def as_float32(x, name: str, min_rank: int = 2):
    """`x` as a float32 tensor of rank ≥ `min_rank`; float16 and bfloat16 are cast up.

    Half-precision products and squared distances underflow or round badly
    (1e-12 is 0 in float16), so every loss computes in float32, also under a
    mixed-precision policy.
    """
    x = keras.ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        raise TypeError(
            f"{name} must be floating point, received dtype {keras.backend.standardize_dtype(x.dtype)}. "
            "Cast it with `keras.ops.cast(x, 'float32')`."
        )
    if len(x.shape) < min_rank:
        raise ValueError(f"{name} must have rank ≥ {min_rank} (batch first), received shape {tuple(x.shape)}.")
    return keras.ops.cast(x, "float32")


def check_number(value, name: str, *, minimum: float = 0, strict: bool = True, integer: bool = False):
    """`value` if it is a finite number above `minimum` (or equal, unless `strict`); else a `ValueError`.

    The losses' argument order of `rkd_keras.checks`, whose messages every check shares.
    """
    if integer:
        return checks.check_int(name, value, low=minimum if not strict else minimum + 1)
    return checks.check_number(name, value, low=minimum, low_open=strict)


# The start of every message about teacher and student tensors of different batches (the terms' cached batches too).
BATCH_MISMATCH = "Teacher and student tensors must come from the same batch"


def check_batch(teacher, student) -> None:
    """Raises when the batch sizes of `teacher` and `student` are known and differ."""
    t, s = teacher.shape[0], student.shape[0]
    if t is not None and s is not None and t != s:
        raise ValueError(
            f"{BATCH_MISMATCH}: received {t} teacher rows and {s} student rows. Feed both models the same inputs."
        )


def same_batch(teacher, student):
    """`(teacher, student)` after `check_batch`; in a TensorFlow graph whose batch size is unknown, checked at run time.

    Only TensorFlow traces with unknown batch sizes (JAX and PyTorch see
    concrete shapes, which `check_batch` checks).
    """
    check_batch(teacher, student)
    if keras.backend.backend() != "tensorflow" or None not in (teacher.shape[0], student.shape[0]):
        return teacher, student
    import tensorflow as tf

    with tf.control_dependencies([
        tf.debugging.assert_equal(
            tf.shape(teacher)[0], tf.shape(student)[0],
            message=f"{BATCH_MISMATCH}; the teacher's and the student's batch sizes differ. Feed both models "
            "the same inputs.",
        )
    ]):
        return tf.identity(teacher), tf.identity(student)


def flatten(x):
    """`(N, ...)` → `(N, D)`. Feature axes of unknown size (only in a TensorFlow graph) need a known rank."""
    if len(x.shape) == 2:
        return x
    if None in x.shape[1:]:
        return keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))
    return keras.ops.reshape(x, (-1, math.prod(x.shape[1:])))


# Magnitudes within 2^±40 keep every square, Gram entry and norm of a loss inside float32's range.
_SAFE_EXPONENT = 40


def magnitude(x, axis=None, keepdims=False):
    """1, or the power of two at or below `max |x|` along `axis` where that is beyond 2^±40; no gradient.

    Dividing by a power of two is exact, so a loss computed on `x / magnitude(x)`
    (with its clamps rescaled by `scaled_eps`) is the loss of `x`, while the
    squares and Gram entries of inputs ×1e20 or ×1e-20 stay inside float32's
    range. Within 2^±40 it is 1 and nothing changes, bit for bit. Zero and
    non-finite maxima give 1 (`guard` makes the loss NaN for the latter).
    """
    top = keras.ops.max(keras.ops.abs(x), axis=axis, keepdims=keepdims, initial=0.0)
    top = keras.ops.where(keras.ops.logical_and(keras.ops.isfinite(top), top > 0.0), top, 1.0)
    exponent = keras.ops.floor(keras.ops.log2(top))
    exponent = keras.ops.where(keras.ops.abs(exponent) > _SAFE_EXPONENT, keras.ops.clip(exponent, -126, 126), 0.0)
    return keras.ops.stop_gradient(keras.ops.ldexp(keras.ops.ones_like(top), keras.ops.cast(exponent, "int32")))


def scaled_eps(eps, scale):
    """A clamp `eps` on squares of `x`, in units of `x / scale`: `eps / scale²`, kept finite and non-zero.

    The bounds change nothing a clamp does: 2^100 is beyond every squared
    distance of rows scaled into [−2, 2], and 2^−126 (float32's smallest
    normal number) below every one that float32 tells from 0 at that scale.
    """
    return keras.ops.clip(eps / scale / scale, min(eps, 2.0**-126), max(eps, 2.0**100))


def norm(x, axis=-1, keepdims=False):
    """The Euclidean norm along `axis`, with gradient 0 at the zero vector (as PyTorch's `norm`).

    `sqrt` has an infinite slope at 0, so a plain norm of a zero row (a
    dead ReLU map, a constant batch centred) gives NaN gradients. The squares
    are taken of `x / magnitude(x)`, so a norm does not overflow (entries of
    1e20) or underflow before the result does, and a NaN or inf in `x` gives
    a NaN or inf norm, never 0.
    """
    scale = magnitude(x, axis=axis, keepdims=True)
    squared = keras.ops.sum(keras.ops.square(x / scale), axis=axis, keepdims=True)
    positive = squared > 0.0
    result = scale * keras.ops.where(positive, keras.ops.sqrt(keras.ops.where(positive, squared, 1.0)), squared)
    return result if keepdims else keras.ops.squeeze(result, axis=axis)


def l2_normalize(x, axis=-1, eps=1e-12):
    """`x / max(‖x‖, eps)` along `axis`: PyTorch's `F.normalize`, a zero vector stays zero."""
    return x / keras.ops.maximum(norm(x, axis=axis, keepdims=True), eps)


def guard(loss, *tensors):
    """`loss` under the package's rules: NaN if any input tensor is not finite, 0 for a batch of no rows.

    A sort, a mask or a clamp can turn a NaN input into a plausible number;
    this makes any non-finite input show as a NaN loss (which
    `keras.callbacks.TerminateOnNaN` stops on). An empty batch (a replica's
    share of the last, short batch under `tf.distribute`) gives 0, as Keras's
    own losses do, instead of a mean over nothing.
    """
    finite = functools.reduce(keras.ops.logical_and, [keras.ops.all(keras.ops.isfinite(x)) for x in tensors])
    loss = keras.ops.where(keras.ops.shape(tensors[0])[0] > 0, loss, 0.0)
    return keras.ops.where(finite, loss, float("nan"))


def in_float64(fn, *arrays):
    """`fn(*arrays)`, with its float64 operations computed in float64 on every backend, gradient included.

    TensorFlow and PyTorch always compute float64 in float64. JAX runs without
    64-bit types unless `jax_enable_x64` is set; here `jax.enable_x64` switches
    them on while `fn` is traced and while its gradient is, the rest of the
    program staying in 32 bits. `fn` takes and returns float32 (or integer)
    arrays; what it does in float64 stays inside it.
    """
    if keras.backend.backend() != "jax":
        return fn(*arrays)
    import jax

    # JAX transposes a function where its gradient is taken, outside any
    # scope entered in the forward pass: the backward pass enters it again.
    @jax.custom_vjp
    def call(*arrays):
        with jax.enable_x64(True):
            return fn(*arrays)

    def forward(*arrays):
        with jax.enable_x64(True):
            return jax.vjp(fn, *arrays)

    def backward(vjp, cotangent):
        with jax.enable_x64(True):
            return vjp(cotangent)

    call.defvjp(forward, backward)
    return call(*arrays)


def centered_gram(x):
    """The float64 Gram matrix of the batch, centred at its mean (call it inside `in_float64`).

    Relations are translation invariant; centring removes the cancellation
    that large-norm embeddings would otherwise cause in `‖a‖² + ‖b‖² − 2a·b`.
    """
    x = keras.ops.cast(x, "float64")
    x = x - keras.ops.mean(x, axis=0, keepdims=True)
    # Not `keras.ops.matmul`: on PyTorch it returns float32 for float64 inputs
    # (Keras promotes 64-bit types to 32 bits except on TensorFlow).
    return keras.ops.einsum("id,jd->ij", x, x)


def squared_distances(gram):
    """`‖x_i − x_j‖²` as float32, computed in float64 from the Gram matrix."""
    norms = keras.ops.diagonal(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    # `where`, not `maximum(squared, 0.0)`, which gives float32 on PyTorch.
    return keras.ops.cast(keras.ops.where(squared > 0.0, squared, 0.0), "float32")
