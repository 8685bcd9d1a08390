"""Triplet margin loss with distance-weighted, batch-hard or all-triplet sampling: the teacher's loss."""

import numpy as np
import tensorflow as tf

from rkd_keras.losses.base import centered_gram, float32_matrix, guard, squared_distances

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
    squared = squared_distances(centered_gram(embeddings))
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
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0], [0.5], [0.6], [1.5]], "float32")
    >>> # 8 triplets; hinge values 0.1, 0.6, 0.5, 1.0, 0.1 and three zeros
    >>> round(float(triplet_loss(labels, embeddings, sampling="all")), 4)
    0.2875
    """
    if sampling not in TRIPLET_SAMPLINGS:
        raise ValueError(f"Unknown sampling {sampling!r}; choose one of {', '.join(TRIPLET_SAMPLINGS)}.")
    embeddings = float32_matrix(embeddings, "Triplet")
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    n = tf.shape(embeddings)[0]
    distances = tf.sqrt(tf.maximum(squared_distances(centered_gram(embeddings)), 1e-12))
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
        # Non-finite embeddings (the loss is NaN then) must not make the draw
        # return out-of-range indices; an empty batch needs one class to draw from.
        log_weights = tf.where(tf.math.is_finite(log_weights), log_weights, 0.0)
        log_weights = tf.pad(log_weights, [[0, 0], [0, tf.cast(n == 0, tf.int32)]])
        sampled = tf.random.categorical(log_weights, n, dtype=tf.int32, seed=seed)
        valid = positive & tf.reduce_any(negative, axis=1, keepdims=True)
        negative_distances = tf.gather(distances, sampled, batch_dims=1)
        losses = tf.where(valid, tf.nn.relu(distances - negative_distances + margin), 0.0)
    loss = tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(tf.cast(valid, tf.float32)))
    return guard(loss, embeddings, embeddings)
