"""The prototypical-network loss (Snell et al. 2017) on class-balanced P×K batches: the few-shot teacher's loss.

Written with `keras.ops`. A P×K batch (`data.pk_batches`) already is an
episode: P ways, each class's first `shots` items (in batch order) its
support, the others its queries.
"""

import keras

from rkd_keras.losses.base import as_float32, check_number, flatten, guard


def prototypical_loss(labels, embeddings, *, shots: int = 1):
    """Prototypical-network loss: each query's negative log-probability of its class under a softmax over −distances.

    Formula (jakesnell/prototypical-networks, `protonets/models/few_shot.py`,
    `Protonet.loss`): `c_k = mean of class k's support embeddings`,
    `p(y = k | q) = softmax_k(−‖q − c_k‖²)`, loss `= mean over queries of
    −log p(y = y_q | q)`. The official code takes its episode as
    `(classes, shots + queries, ...)` arrays; here the classes come from
    `labels`, so any batch order works: each class's first `shots` items in
    the batch are its support and the rest its queries. A class with no
    query (at most `shots` items) still gives a prototype, a distractor for
    the other classes' queries.

    Args:
        labels: Integer class labels, shape `(N,)` or `(N, 1)`.
        embeddings: Embeddings `(N, D)`.
        shots: Support items per class.

    Returns:
        Scalar float32 loss; 0 for a batch without a query.

    Example:
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0], [1.0], [3.0], [2.0]], "float32")
    >>> # prototypes 0 and 3; query 1: distances 1 and 4; query 2: 4 and 1
    >>> round(float(prototypical_loss(labels, embeddings)), 4)  # −log σ(3) for both
    0.0486
    """
    shots = check_number(shots, "shots", minimum=1, strict=False, integer=True)
    ops = keras.ops
    embeddings = flatten(as_float32(embeddings, "Prototypical embeddings"))
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    n = ops.shape(embeddings)[0]
    same = ops.cast(labels[:, None] == labels[None, :], "float32")
    # rank[i]: the items of i's class before i in the batch.
    earlier = ops.cast(ops.arange(n)[None, :] < ops.arange(n)[:, None], "float32")
    rank = ops.sum(same * earlier, axis=1)
    support = ops.cast(rank < shots, "float32")
    # prototypes[j]: the mean of the support of j's class; one column per class (its first item).
    weights = same * support[None, :]
    prototypes = ops.matmul(weights, embeddings) / ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1.0)
    distances = ops.sum(ops.square(embeddings[:, None, :] - prototypes[None, :, :]), axis=2)
    column = rank == 0
    logits = ops.where(column[None, :], -distances, float("-inf"))
    log_p = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    own = ops.logical_and(column[None, :], same > 0)
    query_loss = -ops.sum(ops.where(own, log_p, 0.0), axis=1)
    query = ops.cast(rank >= shots, "float32")
    loss = ops.divide_no_nan(ops.sum(query * query_loss), ops.sum(query))
    return guard(loss, embeddings)
