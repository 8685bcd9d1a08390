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


def _angle_cosines(x, eps):
    """ψ_A: `cos ∠ x_i x_j x_k` for every vertex j, as an `(N, N, N)` tensor.

    Entry `[j, i, k]` is `⟨e_ji, e_jk⟩` with `e_ji = (x_i − x_j) / ‖x_i − x_j‖`.
    As in the official code, a zero difference (i = j, k = j or duplicate
    rows) has direction 0, so those cosines are 0, and i = k gives 1.
    """
    gram = _centered_gram(x)
    squared = _squared_distances(gram)
    # ⟨x_i − x_j, x_k − x_j⟩ = (G_ik − G_jk) − (G_ij − G_jj).  The float64 Gram
    # matrix is split into float32 hi + lo parts: when x_i is near x_j, the
    # difference of the hi parts is exact and the lo parts restore the digits
    # float32 would lose, so near-duplicate rows keep full accuracy.
    hi = tf.cast(gram, tf.float32)
    lo = tf.cast(gram - tf.cast(hi, tf.float64), tf.float32)
    offset = tf.cast(gram - tf.linalg.diag_part(gram)[:, None], tf.float32)
    dot = ((hi[None, :, :] - hi[:, None, :]) + (lo[None, :, :] - lo[:, None, :])) - offset[
        :, :, None
    ]
    # That grouping is exact in i but not in k; the product is symmetric in
    # (i, k), so take each entry from the grouping whose near index is closer.
    i_is_closer = squared[:, :, None] <= squared[:, None, :]
    dot = tf.where(i_is_closer, dot, tf.transpose(dot, [0, 2, 1]))
    inverse_norm = tf.where(
        squared > eps, tf.math.rsqrt(tf.maximum(squared, eps)), 0.0
    )
    return dot * inverse_norm[:, :, None] * inverse_norm[:, None, :]


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


def rkd_angle(teacher, student, *, delta: float = 1.0, eps: float = 1e-12):
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

    Cost: the official code builds an N×N×D tensor (N³·D flops); here every
    angle comes from the N×N Gram matrix (N²·D + N³), with no loss of
    accuracy for near-duplicate rows.

    Args:
        teacher: Teacher embeddings, shape `(N, ...)`; flattened to `(N, -1)`.
        student: Student embeddings, shape `(N, ...)`; any width.
        delta: Threshold of the smooth-L1 (Huber) loss.
        eps: Squared differences at or below `eps` have no direction.

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
    teacher_relations = tf.stop_gradient(_angle_cosines(teacher, eps))
    return _smooth_l1(teacher_relations, _angle_cosines(student, eps), delta)


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

    def __init__(self, delta=1.0, eps=1e-12, reduction="sum_over_batch_size", name="rkd_angle", dtype=None):
        super().__init__(delta=delta, eps=eps, reduction=reduction, name=name, dtype=dtype)


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
