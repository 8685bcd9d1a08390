"""Triplet margin loss with distance-weighted, batch-hard or all-triplet sampling: the teacher's loss.

Written with `keras.ops`; distances come from the float64 Gram matrix (`base.in_float64`).
"""

import keras

from rkd_keras.choices import TRIPLET_SAMPLINGS
from rkd_keras.losses.base import (
    as_float32,
    centered_gram,
    check_number,
    flatten,
    guard,
    in_float64,
    magnitude,
    scaled_eps,
    squared_distances,
)


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
    ops = keras.ops
    # tf.math.l2_normalize's formula, so TensorFlow samples as rkd_keras 0.1.0 did.
    # Rows divided by their magnitude first (exact), so the squares of rows ×1e20 do not overflow.
    scale = magnitude(embeddings, axis=1, keepdims=True)
    embeddings = embeddings / scale
    embeddings = embeddings * ops.rsqrt(
        ops.maximum(ops.sum(ops.square(embeddings), axis=1, keepdims=True), scaled_eps(1e-12, scale))
    )
    dim = float(embeddings.shape[1])
    squared = squared_distances(centered_gram(embeddings))
    distances = ops.maximum(ops.sqrt(squared + ops.eye(ops.shape(embeddings)[0])), cutoff)
    log_weights = (2.0 - dim) * ops.log(distances) - ((dim - 3.0) / 2.0) * ops.log(
        ops.maximum(1.0 - 0.25 * distances * distances, 1e-8)
    )
    weights = ops.exp(log_weights - ops.max(log_weights, axis=1, keepdims=True, initial=float("-inf")))
    negatives = ops.cast(labels[:, None] != labels[None, :], "float32")
    weights = weights * negatives * ops.cast(distances < nonzero_loss_cutoff, "float32")
    weights += ops.cast(ops.sum(weights, axis=1, keepdims=True) == 0, "float32") * negatives
    return ops.divide_no_nan(weights, ops.sum(weights, axis=1, keepdims=True))


def _distances(embeddings, eps=1e-12):
    """`sqrt(max(‖x_i − x_j‖², eps))`, the squares taken of `x / magnitude(x)` (exact): rows ×1e20 fit float32."""
    scale = magnitude(embeddings)
    squared = squared_distances(centered_gram(embeddings / scale))
    return scale * keras.ops.sqrt(keras.ops.maximum(squared, scaled_eps(eps, scale)))


def _draw_negatives(log_weights, embeddings, seed):
    """One negative index per (anchor, positive) pair, `(N, N)`, drawn from each anchor's row of weights.

    TensorFlow: `tf.random.categorical`, as rkd_keras 0.1.0 (TensorFlow's
    global generator when `seed` is None). PyTorch: `keras.random` (its global
    generator when `seed` is None). JAX has no random state inside a compiled
    step (Keras refuses unseeded draws there, and a loss holds no state), so
    the key is `seed` (0 if None) folded with the bits of the batch's
    embeddings: another batch, or the same one a step later, draws anew, and
    the same run draws the same.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # An empty batch needs one class to draw (nothing) from.
        n = tf.shape(log_weights)[0]
        log_weights = tf.pad(log_weights, [[0, 0], [0, tf.cast(n == 0, tf.int32)]])
        return tf.random.categorical(log_weights, n, dtype=tf.int32, seed=seed)
    n = log_weights.shape[0]
    if n == 0:
        return keras.ops.zeros((0, 0), "int32")
    if backend != "jax":
        return keras.random.categorical(log_weights, n, dtype="int32", seed=seed)
    import jax

    bits = jax.lax.bitcast_convert_type(jax.numpy.sum(embeddings), jax.numpy.uint32)
    key = jax.random.fold_in(jax.random.key(0 if seed is None else seed), bits)
    # Samples along the first axis: `[s, a]` is the s-th draw for anchor a.
    return jax.random.categorical(key, log_weights, axis=1, shape=(n, n)).T.astype("int32")


def check_triplet_arguments(margin, sampling, cutoff, nonzero_loss_cutoff) -> None:
    """Refuses an argument of `triplet_loss` (and `TripletLoss`, when built) outside its range.

    `margin` finite and ≥ 0 (0: only triplets in the wrong order count);
    `sampling` one of `TRIPLET_SAMPLINGS`; the cut-offs of distance-weighted
    sampling finite and > 0 (a cut-off of 0 takes the log of a zero distance).
    """
    check_number(margin, "margin", strict=False)
    if sampling not in TRIPLET_SAMPLINGS:
        raise ValueError(f"Unknown sampling {sampling!r}; choose one of {', '.join(TRIPLET_SAMPLINGS)}.")
    check_number(cutoff, "cutoff")
    check_number(nonzero_loss_cutoff, "nonzero_loss_cutoff")


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
        seed: Seed of the negative sampling (see `_draw_negatives` for how
            each backend draws).

    Returns:
        Scalar float32 loss; 0 for a batch without a valid triplet.

    Example:
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0], [0.5], [0.6], [1.5]], "float32")
    >>> # 8 triplets; hinge values 0.1, 0.6, 0.5, 1.0, 0.1 and three zeros
    >>> round(float(triplet_loss(labels, embeddings, sampling="all")), 4)
    0.2875
    """
    check_triplet_arguments(margin, sampling, cutoff, nonzero_loss_cutoff)
    ops = keras.ops
    embeddings = flatten(as_float32(embeddings, "Triplet embeddings"))
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    distances = in_float64(_distances, embeddings)
    n = ops.shape(embeddings)[0]
    same = labels[:, None] == labels[None, :]
    positive = ops.logical_and(same, ops.logical_not(ops.eye(n, dtype="bool")))
    negative = ops.logical_not(same)

    if sampling == "batch_hard":
        # `initial` only matters for an empty batch (Keras refuses an empty max without it).
        hardest_positive = ops.max(ops.where(positive, distances, float("-inf")), axis=1, initial=float("-inf"))
        hardest_negative = ops.min(ops.where(negative, distances, float("inf")), axis=1, initial=float("inf"))
        valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
        losses = ops.relu(ops.where(valid, hardest_positive - hardest_negative + margin, 0.0))
    elif sampling == "all":
        valid = ops.logical_and(positive[:, :, None], negative[:, None, :])
        losses = ops.relu(distances[:, :, None] - distances[:, None, :] + margin)
        losses = ops.where(valid, losses, 0.0)
    else:
        weights = in_float64(
            lambda labels, x: ops.stop_gradient(_distance_weights(labels, x, cutoff, nonzero_loss_cutoff)),
            labels, embeddings,
        )
        # One negative per positive pair (a, p): draw N per anchor, use the p-th.
        log_weights = ops.log(ops.maximum(weights, 1e-30))
        # Non-finite embeddings (the loss is NaN then) must not make the draw
        # return out-of-range indices.
        log_weights = ops.where(ops.isfinite(log_weights), log_weights, 0.0)
        sampled = _draw_negatives(log_weights, embeddings, seed)
        valid = ops.logical_and(positive, ops.any(negative, axis=1, keepdims=True))
        negative_distances = ops.take_along_axis(distances, sampled, axis=1)
        losses = ops.where(valid, ops.relu(distances - negative_distances + margin), 0.0)
    loss = ops.divide_no_nan(ops.sum(losses), ops.sum(ops.cast(valid, "float32")))
    return guard(loss, embeddings)
