"""Relational Knowledge Distillation losses (Park et al., CVPR 2019): RKD-D and RKD-A.

Both losses compare *relations* inside a mini-batch, so the teacher and the
student may have embeddings of different widths. The semantics are those of
the official PyTorch code (github.com/lenscloth/RKD, `metric/loss.py`,
`RkdDistance` and `RKdAngle`), with these deliberate differences:

- a batch of one gives 0 instead of NaN;
- float16/bfloat16 inputs are computed in float32;
- `rkd_angle` counts differences shorter than `sqrt(eps)` (1e-6) as zero,
  where the official `F.normalize` does so only below 1e-12.

Every relation is derived from the batch's Gram matrix, accumulated in float64
on every backend (under `jax.enable_x64` on JAX, see `base.in_float64`), instead
of the official N×N×D tensor of differences; `angle_sum` explains how the
angles keep the direct form's accuracy for near-duplicate rows at O(chunk·N²)
memory. Written with `keras.ops`; on TensorFlow the angle loop is
`angle_sum_tensorflow`'s.
"""

import keras

from rkd_keras.losses import angle_sum
from rkd_keras.losses.base import (
    as_float32,
    centered_gram,
    check_number,
    flatten,
    guard,
    in_float64,
    magnitude,
    same_batch,
    scaled_eps,
    squared_distances,
)


def check_rkd_arguments(delta, eps) -> None:
    """Refuses a `delta` or `eps` of `rkd_distance` and `rkd_angle` (and their wrappers) that is not finite and > 0.

    A Huber threshold of 0 or less is no smooth L1, and a clamp of 0 lets
    the square root of a zero distance give NaN gradients.
    """
    check_number(delta, "delta")
    check_number(eps, "eps")


def _embeddings(teacher, student):
    """Both sides as float32 `(N, D)` matrices of the same batch."""
    teacher = flatten(as_float32(teacher, "Teacher embeddings"))
    student = flatten(as_float32(student, "Student embeddings"))
    return same_batch(teacher, student)


def _normalized_distances(x, eps):
    """ψ_D: pairwise distances divided by their mean over distinct pairs.

    ψ does not change with the scale of `x`: the distances are those of
    `x / magnitude(x)` (exact), whose squares fit float32 also for embeddings ×1e20.
    """
    scale = magnitude(x)
    squared = squared_distances(centered_gram(x / scale))
    # Clamp before the square root as the official `pdist` does: duplicate
    # rows then have finite gradients (the norm of a zero vector does not).
    distances = keras.ops.sqrt(keras.ops.maximum(squared, scaled_eps(eps, scale)))
    rows = keras.ops.arange(keras.ops.shape(x)[0])
    distances = keras.ops.where(rows[:, None] == rows[None, :], 0.0, distances)
    n = keras.ops.cast(keras.ops.shape(x)[0], "float32")
    # Off the diagonal every distance is ≥ sqrt(eps) > 0, so the official
    # "mean over d > 0" is the mean over the N·(N−1) distinct pairs.
    num_pairs = n * (n - 1.0)
    mean = keras.ops.divide_no_nan(keras.ops.sum(distances), num_pairs)
    # A batch of one has no pairs: ψ is 0 (the official code gives NaN).
    return keras.ops.divide_no_nan(distances, mean)


def _angle_huber_sum(teacher, student, delta, eps, chunk_size):
    if keras.backend.backend() == "tensorflow":
        from rkd_keras.losses import angle_sum_tensorflow

        return angle_sum_tensorflow.huber_sum(teacher, student, delta, eps, chunk_size)
    return angle_sum.huber_sum(teacher, student, delta, eps, chunk_size)


def _smooth_l1(teacher_relations, student_relations, delta):
    # Huber with threshold `delta`; equals PyTorch's smooth_l1_loss at delta=1,
    # the paper's setting.  The mean runs over every entry, the degenerate
    # ones included, as in the official code, so the paper's weights carry over.
    return keras.losses.huber(
        keras.ops.reshape(teacher_relations, (-1,)),
        keras.ops.reshape(student_relations, (-1,)),
        delta=delta,
    )


def rkd_distance(teacher, student, *, delta: float = 1.0, eps: float = 1e-12):
    """Distance-wise RKD loss (RKD-D, eq. 4–5 of the paper).

    Formula:
    ```
    ψ(x_i, x_j) = ‖x_i − x_j‖₂ / μ,   μ = mean over i ≠ j of ‖x_i − x_j‖₂
    loss = mean over all N² pairs of huber(ψ(t_i, t_j) − ψ(s_i, s_j), delta)
    ```
    Teacher and student are each normalized by their own μ; the teacher side
    carries no gradient. Squared distances are clamped at `eps` before the
    square root, as in the official code.

    Differences from the official code: a batch of one gives 0 (not NaN);
    float16/bfloat16 inputs are computed in float32.

    Args:
        teacher: Teacher embeddings, shape `(N, ...)`; flattened to `(N, -1)`.
        student: Student embeddings, shape `(N, ...)`; any width.
        delta: Threshold of the smooth-L1 (Huber) loss.
        eps: Clamp of squared distances before the square root.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.random.default_rng(0).normal(size=(8, 512)).astype("float32")
    >>> round(float(rkd_distance(teacher, 2.0 * teacher)), 6)  # a scaled copy: no loss
    0.0
    >>> # ψ: (0.75, 1.5, 0.75) against (0.5, 1.5, 1.0); 4 of 9 entries give huber(0.25)
    >>> round(float(rkd_distance([[0.0], [1.0], [2.0]], [[0.0], [1.0], [3.0]])), 6)
    0.013889
    """
    check_rkd_arguments(delta, eps)
    teacher, student = _embeddings(teacher, student)

    def loss(teacher, student):
        teacher_relations = keras.ops.stop_gradient(_normalized_distances(teacher, eps))
        return _smooth_l1(teacher_relations, _normalized_distances(student, eps), delta)

    return guard(in_float64(loss, teacher, student), teacher, student)


def rkd_angle(
    teacher, student, *, delta: float = 1.0, eps: float = 1e-12, chunk_size: int | None = None
):
    """Angle-wise RKD loss (RKD-A, eq. 6–7 of the paper).

    Formula:
    ```
    ψ(x_i, x_j, x_k) = ⟨e_ij, e_kj⟩,   e_ij = (x_i − x_j) / ‖x_i − x_j‖₂
    loss = mean over all N³ triples of huber(ψ(t_i, t_j, t_k) − ψ(s_i, s_j, s_k), delta)
    ```
    Degenerate triples are kept as in the official code (a zero difference
    has direction 0); they are equal for teacher and student. Differences
    shorter than `sqrt(eps)` count as zero. The teacher side carries no
    gradient.

    Cost: the official code builds an N×N×D tensor (N³·D flops, N²·D memory
    plus N³ angles); here every angle comes from the N×N Gram matrix
    (N²·D + N³ flops), with no loss of accuracy for near-duplicate rows; the
    angles are formed `chunk_size` vertices at a time and the gradient is
    accumulated in the same pass, so memory is O(chunk_size·N²).

    Args:
        teacher: Teacher embeddings, shape `(N, ...)`; flattened to `(N, -1)`.
        student: Student embeddings, shape `(N, ...)`; any width.
        delta: Threshold of the smooth-L1 (Huber) loss.
        eps: Squared differences at or below `eps` have no direction.
        chunk_size: Vertices whose N×N angles are formed at once. `None`
            picks it from N so that one chunk holds about 4M angles
            (all of them up to N = 161).

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.random.default_rng(0).normal(size=(8, 512)).astype("float32")
    >>> float(rkd_angle(teacher, 3.0 * teacher + 1.0)) < 1e-10  # a similar copy: the same angles
    True
    """
    check_rkd_arguments(delta, eps)
    teacher, student = _embeddings(teacher, student)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of vertices or None, received {chunk_size}.")

    def loss(teacher, student):
        total = _angle_huber_sum(teacher, student, delta, eps, chunk_size)
        # An empty batch sums to 0. (Not `divide_no_nan`: it gives float32 on PyTorch.)
        n = keras.ops.cast(keras.ops.maximum(keras.ops.shape(student)[0], 1), "float64")
        return keras.ops.cast(total / (n * n * n), "float32")

    return guard(in_float64(loss, teacher, student), teacher, student)
