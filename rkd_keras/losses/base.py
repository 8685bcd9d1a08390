"""What every loss of `rkd_keras.losses` shares: input checks, the rules for non-finite inputs and
empty batches, norms with finite gradients, and the batch's Gram matrix.

The `keras.ops` helpers serve the losses written for every backend; the
TensorFlow ones (`float32_matrix`, `check_same_batch`, `centered_gram`,
`squared_distances`) serve RKD and the triplet loss, which are TensorFlow code.
"""

import math
import numbers

import keras
import tensorflow as tf


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


def check_number(value, name: str, *, minimum: float = 0.0, strict: bool = True, integer: bool = False):
    """`value` if it is a (finite) number above `minimum` (or equal, unless `strict`); else a `ValueError`."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what} {'>' if strict else '≥'} {minimum:g}, received {value!r}.")
    return int(value) if integer else float(value)


def check_batch(teacher, student) -> None:
    """Raises when the batch sizes of `teacher` and `student` are known and differ."""
    t, s = teacher.shape[0], student.shape[0]
    if t is not None and s is not None and t != s:
        raise ValueError(
            "Teacher and student tensors must come from the same batch: "
            f"received {t} teacher rows and {s} student rows. Feed both "
            "models the same inputs."
        )


def flatten(x):
    """`(N, ...)` → `(N, D)`; the feature axes must have known sizes (they do in a Keras model)."""
    if any(size is None for size in x.shape[1:]):
        raise ValueError(f"The feature axes must have known sizes, received shape {tuple(x.shape)}.")
    return keras.ops.reshape(x, (-1, math.prod(x.shape[1:])))


def norm(x, axis=-1, keepdims=False):
    """The Euclidean norm along `axis`, with gradient 0 at the zero vector (as PyTorch's `norm`).

    `sqrt` has an infinite slope at 0, so a plain norm of a zero row (a
    dead ReLU map, a constant batch centred) gives NaN gradients.
    """
    squared = keras.ops.sum(keras.ops.square(x), axis=axis, keepdims=keepdims)
    positive = squared > 0.0
    return keras.ops.where(positive, keras.ops.sqrt(keras.ops.where(positive, squared, 1.0)), 0.0)


def l2_normalize(x, axis=-1, eps: float = 1e-12):
    """`x / max(‖x‖, eps)` along `axis`: PyTorch's `F.normalize`, a zero vector stays zero."""
    return x / keras.ops.maximum(norm(x, axis=axis, keepdims=True), eps)


def guard(loss, teacher, student):
    """`loss` under the package's rules: NaN if any input is not finite, 0 for a batch of no rows.

    A sort, a mask or a clamp can turn a NaN input into a plausible number;
    this makes any non-finite input show as a NaN loss (which
    `keras.callbacks.TerminateOnNaN` stops on). An empty batch (a replica's
    share of the last, short batch under `tf.distribute`) gives 0, as Keras's
    own losses do, instead of a mean over nothing.
    """
    finite = keras.ops.logical_and(
        keras.ops.all(keras.ops.isfinite(teacher)), keras.ops.all(keras.ops.isfinite(student))
    )
    loss = keras.ops.where(keras.ops.shape(student)[0] > 0, loss, 0.0)
    return keras.ops.where(finite, loss, float("nan"))


def float32_matrix(x, name):
    """Returns `x` as a float32 `(N, D)` matrix; rank > 2 is flattened."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(
            f"{name} embeddings must be floating point, received dtype "
            f"{x.dtype.name}. Cast them with `tf.cast(x, 'float32')`."
        )
    if x.shape.rank is not None and x.shape.rank < 2:
        raise ValueError(
            f"{name} embeddings must have shape (batch, features...), "
            f"received shape {x.shape}."
        )
    # Half-precision squared distances underflow (1e-12 is 0 in float16), so
    # the losses always run in float32, also under a mixed-precision policy.
    x = tf.cast(x, tf.float32)
    return tf.reshape(x, [tf.shape(x)[0], -1])


def check_same_batch(teacher, student):
    """Returns `(teacher, student)`, raising if their batch sizes differ."""
    t, s = teacher.shape[0], student.shape[0]
    if t is not None and s is not None and t != s:
        raise ValueError(
            "Teacher and student embeddings must come from the same batch: "
            f"received {t} teacher rows and {s} student rows. Feed both "
            "models the same inputs."
        )
    with tf.control_dependencies(
        [
            tf.debugging.assert_equal(
                tf.shape(teacher)[0],
                tf.shape(student)[0],
                message="Teacher and student embeddings have different "
                "batch sizes; feed both models the same inputs.",
            )
        ]
    ):
        return tf.identity(teacher), tf.identity(student)


def centered_gram(x):
    """The float64 Gram matrix of the batch, centred at its mean.

    Relations are translation invariant; centring removes the cancellation
    that large-norm embeddings would otherwise cause in `‖a‖² + ‖b‖² − 2a·b`.
    """
    x = tf.cast(x, tf.float64)
    x = x - tf.reduce_mean(x, axis=0, keepdims=True)
    return tf.matmul(x, x, transpose_b=True)


def squared_distances(gram):
    """`‖x_i − x_j‖²` as float32, computed in float64 from the Gram matrix."""
    norms = tf.linalg.diag_part(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    return tf.cast(tf.maximum(squared, 0.0), tf.float32)
