"""What every loss of `rkd_keras.losses` shares: input checks and the batch's Gram matrix."""

import tensorflow as tf


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
