"""Relational Knowledge Distillation losses (Park et al., CVPR 2019): RKD-D and RKD-A.

Both losses compare *relations* inside a mini-batch, so the teacher and the
student may have embeddings of different widths. The semantics are those of
the official PyTorch code (github.com/lenscloth/RKD, `metric/loss.py`,
`RkdDistance` and `RKdAngle`), with these deliberate differences:

- a batch of one gives 0 instead of NaN;
- float16/bfloat16 inputs are computed in float32;
- `rkd_angle` counts differences shorter than `sqrt(eps)` (1e-6) as zero,
  where the official `F.normalize` does so only below 1e-12.

Every relation is derived from the batch's Gram matrix instead of the official
N×N×D tensor of differences. The Gram matrix is accumulated in float64 (only
N²·D work), and the inner products of differences,
`⟨x_i − x_j, x_k − x_j⟩ = G_ik − G_jk − G_ji + G_jj`, are taken from it in
float64 before the angles are formed in float32, so near-duplicate rows keep
the accuracy of the direct form.
"""

import keras
import tensorflow as tf

from rkd_keras.losses.base import centered_gram, check_same_batch, float32_matrix, guard, squared_distances


def _normalized_distances(x, eps):
    """ψ_D: pairwise distances divided by their mean over distinct pairs."""
    squared = squared_distances(centered_gram(x))
    # Clamp before the square root as the official `pdist` does: duplicate
    # rows then have finite gradients (tf.norm of a zero vector does not).
    distances = tf.sqrt(tf.maximum(squared, eps))
    distances = tf.linalg.set_diag(distances, tf.zeros(tf.shape(distances)[:1]))
    n = tf.cast(tf.shape(x)[0], tf.float32)
    # Off the diagonal every distance is ≥ sqrt(eps) > 0, so the official
    # "mean over d > 0" is the mean over the N·(N−1) distinct pairs.
    num_pairs = n * (n - 1.0)
    mean = tf.math.divide_no_nan(tf.reduce_sum(distances), num_pairs)
    # A batch of one has no pairs: ψ is 0 (the official code gives NaN).
    return tf.math.divide_no_nan(distances, mean)


# Angles in one `(chunk, N, N)` slab: 4M keeps a chunk's working set (about
# ten such float32/float64 tensors) in the low hundreds of MB at any N.
_ANGLE_CHUNK_ELEMENTS = 2**22


def _angle_factors(x, eps):
    """The centred float64 Gram matrix and the inverse lengths `1/‖x_i − x_j‖`."""
    gram = centered_gram(x)
    squared = squared_distances(gram)
    # A zero difference has direction 0 (F.normalize in the official code).
    inverse_norm = tf.where(squared > eps, tf.math.rsqrt(tf.maximum(squared, eps)), 0.0)
    return gram, inverse_norm


def _angle_cosines(gram, inverse_norm, vertices):
    """ψ_A at the given vertices j: `[j, i, k] = ⟨e_ji, e_jk⟩`, shape `(c, N, N)`.

    `e_ji = (x_i − x_j) / ‖x_i − x_j‖`, and the inner products are
    `⟨x_i − x_j, x_k − x_j⟩ = G_ik − G_jk − (G_ji − G_jj)` taken in float64, so
    near-duplicate rows lose no accuracy to cancellation. i = j, k = j and
    duplicate rows give 0, i = k gives 1, as in the official code.
    """
    gram_j = tf.gather(gram, vertices)
    offset = gram_j - tf.gather(tf.linalg.diag_part(gram), vertices)[:, None]
    dot = tf.cast(gram[None] - gram_j[:, None, :] - offset[:, :, None], tf.float32)
    norm_j = tf.gather(inverse_norm, vertices)
    return dot * norm_j[:, :, None] * norm_j[:, None, :]


@tf.function(jit_compile=True)
def _angle_slopes(student_gram, student_norm, teacher_gram, teacher_norm, vertices, weight, delta):
    """One chunk of vertices, fused by XLA: slopes, student cosines, loss row sums."""
    student_cosines = _angle_cosines(student_gram, student_norm, vertices)
    difference = student_cosines - _angle_cosines(teacher_gram, teacher_norm, vertices)
    # huber(d) = r·(d − r/2) with r = clip(d, ±delta) = huber'(d): one
    # quantity gives the loss (PyTorch's smooth_l1 at delta=1) and its slope.
    slope = weight[:, None, None] * tf.clip_by_value(difference, -delta, delta)
    return slope, student_cosines, tf.reduce_sum(slope * (difference - 0.5 * slope), axis=2)


def _angle_chunk(student_gram, student_norm, teacher_gram, teacher_norm, vertices, weight, delta):
    """One chunk's huber sum and its gradient with respect to the student's factors.

    The reductions run outside XLA on the materialized slopes: XLA on CPU
    would recompute the whole fused chain once per reduction.
    """
    slope, student_cosines, row_losses = _angle_slopes(
        student_gram, student_norm, teacher_gram, teacher_norm, vertices, weight, delta
    )
    total = tf.cast(tf.reduce_sum(row_losses), tf.float64)
    # cos_jik = dot_jik·a_ji·a_jk: the slope with respect to dot_jik.
    norm_j = tf.gather(student_norm, vertices)
    dot_gradient = slope * norm_j[:, :, None] * norm_j[:, None, :]
    # cos is symmetric in (i, k), so both slots of a_j· give the same sum.
    norm_gradient = 2.0 * tf.math.divide_no_nan(tf.reduce_sum(slope * student_cosines, axis=2), norm_j)
    return total, tf.reduce_sum(dot_gradient, axis=0), tf.reduce_sum(dot_gradient, axis=2), norm_gradient


def _angle_huber_sum(teacher, student, delta, eps, chunk_size):
    """Σ over all N³ triples of huber(ψ_A(student) − ψ_A(teacher)), and its gradient.

    Vertices are processed `chunk_size` at a time, so memory is O(chunk·N²)
    instead of O(N³). The gradient with respect to the student's Gram matrix
    and inverse lengths is accumulated in the same pass, in closed form, so
    the backward pass neither keeps nor recomputes the angles. Every chunk
    has the same shape (the last one repeats a vertex with weight 0), which
    XLA needs.
    """
    teacher_gram, teacher_norm = (tf.stop_gradient(f) for f in _angle_factors(teacher, eps))
    student_gram, student_norm = _angle_factors(student, eps)
    n = tf.shape(student)[0]
    if chunk_size is None:
        chunk_size = tf.maximum(1, _ANGLE_CHUNK_ELEMENTS // tf.maximum(n * n, 1))
    chunk_size = tf.minimum(tf.cast(chunk_size, tf.int32), tf.maximum(n, 1))
    num_chunks = -(-n // chunk_size)

    def chunk(index, total, dot_gradient_sum, row_sums, norm_gradients):
        vertices = index * chunk_size + tf.range(chunk_size)
        weight = tf.cast(vertices < n, tf.float32)
        vertices = tf.minimum(vertices, n - 1)
        terms = _angle_chunk(student_gram, student_norm, teacher_gram, teacher_norm, vertices, weight, delta)
        return (
            index + 1,
            total + terms[0],
            dot_gradient_sum + terms[1],
            row_sums.write(index, terms[2]),
            norm_gradients.write(index, terms[3]),
        )

    @tf.custom_gradient
    def huber_sum(gram, norm):
        row_sums, norm_gradients = (tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False) for _ in "ab")
        _, total, dot_gradient_sum, row_sums, norm_gradients = tf.while_loop(
            lambda index, *_: index < num_chunks,
            chunk,
            (tf.constant(0), tf.constant(0.0, tf.float64), tf.zeros_like(norm), row_sums, norm_gradients),
        )
        # dot_jik = G_ik − G_jk − G_ji + G_jj; the (j, k) and (j, i) terms give
        # the same row sums by symmetry, and G_jj collects each row's total.
        row_sums = row_sums.concat()[:n]
        gram_gradient = dot_gradient_sum - 2.0 * row_sums + tf.linalg.diag(tf.reduce_sum(row_sums, axis=1))
        norm_gradient = norm_gradients.concat()[:n]

        def grad(upstream):
            return upstream * tf.cast(gram_gradient, tf.float64), tf.cast(upstream, tf.float32) * norm_gradient

        return total, grad

    return huber_sum(student_gram, student_norm)


def _smooth_l1(teacher_relations, student_relations, delta):
    # Huber with threshold `delta`; equals PyTorch's smooth_l1_loss at delta=1,
    # the paper's setting.  The mean runs over every entry, the degenerate
    # ones included, as in the official code, so the paper's weights carry over.
    return keras.losses.huber(
        tf.reshape(teacher_relations, [-1]),
        tf.reshape(student_relations, [-1]),
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
    teacher = float32_matrix(teacher, "Teacher")
    student = float32_matrix(student, "Student")
    teacher, student = check_same_batch(teacher, student)
    teacher_relations = tf.stop_gradient(_normalized_distances(teacher, eps))
    return guard(_smooth_l1(teacher_relations, _normalized_distances(student, eps), delta), teacher, student)


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
    teacher = float32_matrix(teacher, "Teacher")
    student = float32_matrix(student, "Student")
    teacher, student = check_same_batch(teacher, student)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of vertices or None, received {chunk_size}.")
    # An empty batch has no angles, but the chunk loop needs a vertex: one
    # zero row (only then) gives it one and adds nothing (its angles are 0).
    empty = [[0, tf.cast(tf.equal(tf.shape(student)[0], 0), tf.int32)], [0, 0]]
    total = _angle_huber_sum(tf.pad(teacher, empty), tf.pad(student, empty), delta, eps, chunk_size)
    n = tf.cast(tf.shape(student)[0], tf.float64)
    return guard(tf.cast(tf.math.divide_no_nan(total, n * n * n), tf.float32), teacher, student)
