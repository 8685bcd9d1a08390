"""Relational Knowledge Distillation losses (Park et al., CVPR 2019).

Both losses compare *relations* inside a mini-batch, so the teacher and the
student may have embeddings of different widths.  The semantics are those of
the official PyTorch code (github.com/lenscloth/RKD, `metric/loss.py`), with
two documented differences: a batch of one gives 0 instead of NaN, and
float16/bfloat16 inputs are computed in float32.

Every relation is derived from the batch's Gram matrix instead of the official
N×N×D tensor of differences.  The Gram matrix is accumulated in float64 (only
N²·D work) and the N³ angle tensor is assembled in float32 from a hi/lo split
of it, which keeps near-duplicate rows as accurate as the direct form.
"""

import keras
import numpy as np
import tensorflow as tf

_PACKAGE = "rkd_keras"


def _embedding_matrix(x, name):
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


def _check_batch_sizes(teacher, student):
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


def _centered_gram(x):
    """The float64 Gram matrix of the batch, centred at its mean.

    Relations are translation invariant; centring removes the cancellation
    that large-norm embeddings would otherwise cause in `‖a‖² + ‖b‖² − 2a·b`.
    """
    x = tf.cast(x, tf.float64)
    x = x - tf.reduce_mean(x, axis=0, keepdims=True)
    return tf.matmul(x, x, transpose_b=True)


def _squared_distances(gram):
    """`‖x_i − x_j‖²` as float32, computed in float64 from the Gram matrix."""
    norms = tf.linalg.diag_part(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    return tf.cast(tf.maximum(squared, 0.0), tf.float32)


def _normalized_distances(x, eps):
    """ψ_D: pairwise distances divided by their mean over distinct pairs."""
    squared = _squared_distances(_centered_gram(x))
    # Clamp before the square root as the official `pdist` does: duplicate
    # rows then have finite gradients (tf.norm of a zero vector does not).
    distances = tf.sqrt(tf.maximum(squared, eps))
    distances = tf.linalg.set_diag(distances, tf.zeros_like(distances[0]))
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
    gram = _centered_gram(x)
    squared = _squared_distances(gram)
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
    >>> teacher = tf.random.normal((8, 512))
    >>> rkd_distance(teacher, 2.0 * teacher)  # a scaled copy: no loss
    <tf.Tensor: shape=(), dtype=float32, numpy=0.0>
    """
    teacher = _embedding_matrix(teacher, "Teacher")
    student = _embedding_matrix(student, "Student")
    teacher, student = _check_batch_sizes(teacher, student)
    teacher_relations = tf.stop_gradient(_normalized_distances(teacher, eps))
    return _smooth_l1(teacher_relations, _normalized_distances(student, eps), delta)


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
    >>> teacher = tf.random.normal((8, 512))
    >>> float(rkd_angle(teacher, 3.0 * teacher + 1.0)) < 1e-10  # similar copy
    True
    """
    teacher = _embedding_matrix(teacher, "Teacher")
    student = _embedding_matrix(student, "Student")
    teacher, student = _check_batch_sizes(teacher, student)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of vertices or None, received {chunk_size}.")
    total = _angle_huber_sum(teacher, student, delta, eps, chunk_size)
    n = tf.cast(tf.shape(student)[0], tf.float64)
    return tf.cast(tf.math.divide_no_nan(total, n * n * n), tf.float32)


class _RelationalLoss(keras.losses.Loss):
    """`keras.losses.Loss` over (teacher embeddings, student embeddings)."""

    fn = None

    def __init__(self, delta=1.0, eps=1e-12, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.delta = delta
        self.eps = eps

    def call(self, y_true, y_pred):
        return type(self).fn(y_true, y_pred, delta=self.delta, eps=self.eps)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta, "eps": self.eps}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RKDDistance(_RelationalLoss):
    """Distance-wise RKD loss; see `rkd_distance`.

    `y_true` holds the teacher embeddings and `y_pred` the student's.

    Example:
    >>> loss = RKDDistance()
    >>> loss(teacher_embeddings, student_embeddings)
    """

    fn = staticmethod(rkd_distance)

    def __init__(self, delta=1.0, eps=1e-12, reduction="sum_over_batch_size", name="rkd_distance", dtype=None):
        super().__init__(delta=delta, eps=eps, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RKDAngle(_RelationalLoss):
    """Angle-wise RKD loss; see `rkd_angle`.

    `y_true` holds the teacher embeddings and `y_pred` the student's.

    Example:
    >>> loss = RKDAngle()
    >>> loss(teacher_embeddings, student_embeddings)
    """

    fn = staticmethod(rkd_angle)

    def __init__(
        self, delta=1.0, eps=1e-12, chunk_size=None, reduction="sum_over_batch_size", name="rkd_angle", dtype=None
    ):
        super().__init__(delta=delta, eps=eps, reduction=reduction, name=name, dtype=dtype)
        self.chunk_size = chunk_size

    def call(self, y_true, y_pred):
        return rkd_angle(y_true, y_pred, delta=self.delta, eps=self.eps, chunk_size=self.chunk_size)

    def get_config(self):
        return {**super().get_config(), "chunk_size": self.chunk_size}


TRIPLET_SAMPLINGS = ("distance_weighted", "batch_hard", "all")


def _distance_weights(labels, embeddings, cutoff, nonzero_loss_cutoff):
    """Negative-sampling probabilities of distance-weighted sampling (Wu et al. 2017).

    Row a is the distribution over negatives n for anchor a, ∝ 1 / q(d_an),
    q the density of distances between points uniform on the unit sphere,
    computed on L2-normalized embeddings with d clipped below at `cutoff`;
    negatives farther than `nonzero_loss_cutoff` get no weight unless no other
    negative is left. Follows the official RKD `DistanceWeighted` sampler; the
    log of `1 − d²/4` is clipped at 1e-8 as in Wu et al.'s code (the RKD code
    gives NaN at d = 2).
    """
    embeddings = tf.math.l2_normalize(embeddings, axis=1)
    n = tf.shape(embeddings)[0]
    dim = tf.cast(tf.shape(embeddings)[1], tf.float32)
    squared = _squared_distances(_centered_gram(embeddings))
    distances = tf.maximum(tf.sqrt(squared + tf.eye(n)), cutoff)
    log_weights = (2.0 - dim) * tf.math.log(distances) - ((dim - 3.0) / 2.0) * tf.math.log(
        tf.maximum(1.0 - 0.25 * distances * distances, 1e-8)
    )
    weights = tf.exp(log_weights - tf.reduce_max(log_weights, axis=1, keepdims=True))
    negatives = tf.cast(labels[:, None] != labels[None, :], tf.float32)
    weights = weights * negatives * tf.cast(distances < nonzero_loss_cutoff, tf.float32)
    weights += tf.cast(tf.reduce_sum(weights, axis=1, keepdims=True) == 0, tf.float32) * negatives
    return tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=1, keepdims=True))


def triplet_loss(
    labels,
    embeddings,
    *,
    margin: float = 0.2,
    sampling: str = "distance_weighted",
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    seed: int | None = None,
):
    """Triplet margin loss over the triplets of a batch.

    Formula: `mean over triplets (a, p, n) of max(d(a, p) − d(a, n) + margin, 0)`,
    `d` the Euclidean distance, `p` of the anchor's class, `n` of another one.

    Triplets by `sampling`:
    - `"distance_weighted"` (the paper's teacher; Wu et al. 2017): every
      positive pair (a, p), with one negative drawn for it from
      `_distance_weights` (cut-off `cutoff`, non-zero-loss cut-off
      `nonzero_loss_cutoff`), as in the official RKD code.
    - `"batch_hard"`: each anchor with its farthest positive and nearest negative.
    - `"all"`: every valid triplet.

    Args:
        labels: Integer class labels, shape `(N,)` or `(N, 1)`.
        embeddings: Embeddings `(N, D)`.
        margin: Margin of the triplet loss.
        sampling: `"distance_weighted"`, `"batch_hard"` or `"all"`.
        cutoff: Smallest distance used for the sampling weights.
        nonzero_loss_cutoff: Negatives farther than this are not sampled.
        seed: Seed of the negative sampling.

    Returns:
        Scalar float32 loss; 0 for a batch without a valid triplet.

    Example:
    >>> labels = tf.constant([0, 0, 1, 1])
    >>> triplet_loss(labels, tf.random.normal((4, 8)), sampling="all")
    """
    if sampling not in TRIPLET_SAMPLINGS:
        raise ValueError(f"Unknown sampling {sampling!r}; choose one of {', '.join(TRIPLET_SAMPLINGS)}.")
    embeddings = _embedding_matrix(embeddings, "Triplet")
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    n = tf.shape(embeddings)[0]
    distances = tf.sqrt(tf.maximum(_squared_distances(_centered_gram(embeddings)), 1e-12))
    same = labels[:, None] == labels[None, :]
    positive = same & ~tf.eye(n, dtype=tf.bool)
    negative = ~same

    if sampling == "batch_hard":
        hardest_positive = tf.reduce_max(tf.where(positive, distances, -np.inf), axis=1)
        hardest_negative = tf.reduce_min(tf.where(negative, distances, np.inf), axis=1)
        valid = tf.reduce_any(positive, axis=1) & tf.reduce_any(negative, axis=1)
        losses = tf.nn.relu(tf.where(valid, hardest_positive - hardest_negative + margin, 0.0))
    elif sampling == "all":
        valid = positive[:, :, None] & negative[:, None, :]
        losses = tf.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
        losses = tf.where(valid, losses, 0.0)
    else:
        weights = tf.stop_gradient(_distance_weights(labels, embeddings, cutoff, nonzero_loss_cutoff))
        # One negative per positive pair (a, p): draw N per anchor, use the p-th.
        log_weights = tf.math.log(tf.maximum(weights, 1e-30))
        sampled = tf.random.categorical(log_weights, n, dtype=tf.int32, seed=seed)
        valid = positive & tf.reduce_any(negative, axis=1, keepdims=True)
        negative_distances = tf.gather(distances, sampled, batch_dims=1)
        losses = tf.where(valid, tf.nn.relu(distances - negative_distances + margin), 0.0)
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(tf.cast(valid, tf.float32)))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TripletLoss(keras.losses.Loss):
    """Triplet loss on `(labels, embeddings)`; see `triplet_loss`.

    Usable as a model's loss (`y_true` = labels) and as the student's task
    loss in `Distiller.compile(loss=TripletLoss())`.

    Example:
    >>> teacher.compile(optimizer="adam", loss=TripletLoss(margin=0.2))
    """

    def __init__(
        self,
        margin=0.2,
        sampling="distance_weighted",
        cutoff=0.5,
        nonzero_loss_cutoff=1.4,
        seed=None,
        reduction="sum_over_batch_size",
        name="triplet_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if sampling not in TRIPLET_SAMPLINGS:
            raise ValueError(f"Unknown sampling {sampling!r}; choose one of {', '.join(TRIPLET_SAMPLINGS)}.")
        self.margin, self.sampling, self.seed = margin, sampling, seed
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff

    def call(self, y_true, y_pred):
        return triplet_loss(
            tf.cast(y_true, tf.int64) if y_true.dtype.is_floating else y_true,
            y_pred,
            margin=self.margin,
            sampling=self.sampling,
            cutoff=self.cutoff,
            nonzero_loss_cutoff=self.nonzero_loss_cutoff,
            seed=self.seed,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "sampling": self.sampling,
            "cutoff": self.cutoff,
            "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
            "seed": self.seed,
        }
