"""Exact retrieval metrics (Recall@K, MAP@R, R-precision), few-shot accuracy, `embed`, and a Keras callback.

Every item queries all the others, itself excluded by index, so duplicate
embeddings are handled. Queries are processed in chunks: memory stays at
a few `batch_size × N` scores, never N × N. Ties in distance are broken by the
lower item index, deterministically.
"""

import copy
import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from rkd_keras.checks import check_choice, check_int

METRICS = ("euclidean", "cosine")


def _prepare(embeddings, labels, metric, batch_size, gallery=None):
    """Query embeddings and labels as tensors, and the gallery's (the queries themselves by default)."""
    queries, labels = _prepare_one(embeddings, labels, metric, batch_size)
    if gallery is None:
        return queries, labels, queries
    gallery_shape, query_shape = np.shape(gallery), tuple(queries.shape)
    if gallery_shape != query_shape:
        raise ValueError(
            f"The gallery must hold the same N items as the queries, embedded to the same width: expected shape "
            f"{query_shape}, received {gallery_shape}; embed the same data with a model of the student's width."
        )
    return queries, labels, _prepare_one(gallery, labels, metric, batch_size)[0]


def _prepare_one(embeddings, labels, metric, batch_size):
    check_choice("metric", metric, METRICS)
    check_int("batch_size", batch_size, low=1)
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(
            f"Expected embeddings (N, D) and N labels, received embeddings of shape "
            f"{embeddings.shape} and {len(labels)} labels."
        )
    if len(labels) < 2:
        raise ValueError(f"Retrieval needs at least 2 items (each queries the others), received {len(labels)}.")
    # A NaN distance compares false with everything, which would rank such
    # rows arbitrarily and still give a plausible recall.
    bad_rows = int(np.count_nonzero(~np.isfinite(embeddings).all(axis=1)))
    if bad_rows:
        raise ValueError(
            f"{bad_rows} of {len(labels)} embedding rows hold NaN or Inf values, so no distance to them is "
            "defined; check the model (trained to NaN?) and its inputs."
        )
    if metric == "cosine":
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return tf.constant(embeddings), tf.constant(labels)


@tf.function(reduce_retracing=True)
def _query_scores(queries, first, items, item_norms):
    """Scores of a chunk of queries against every item, higher is nearer; self at −inf.

    `2·q·x − ‖x‖²` ranks items exactly as the squared Euclidean distance
    `‖q‖² + ‖x‖² − 2·q·x` does, with two fewer chunk-sized temporaries.
    """
    scores = 2.0 * tf.matmul(queries, items, transpose_b=True) - item_norms[None, :]
    rows = tf.range(tf.shape(queries)[0])
    return tf.tensor_scatter_nd_update(
        scores, tf.stack([rows, rows + first], axis=1), tf.fill(tf.shape(rows), -np.inf)
    )


def _chunks(embeddings, batch_size, gallery):
    """Yields (first query index, scores of the chunk's queries against all gallery items)."""
    norms = tf.reduce_sum(gallery * gallery, axis=1)
    for first in range(0, int(embeddings.shape[0]), batch_size):
        chunk = embeddings[first : first + batch_size]
        yield first, _query_scores(chunk, tf.constant(first, tf.int32), gallery, norms)


def recall_at_k(
    embeddings, labels, ks=(1, 2, 4, 8), *, gallery=None, metric: str = "euclidean", batch_size: int = 512
) -> dict:
    """Recall@K as in the paper: the share of queries with a same-class item among their K nearest.

    Args:
        embeddings: `(N, D)` embeddings.
        labels: `(N,)` class labels.
        ks: The K values.
        gallery: Optional `(N, D)` embeddings of the same N items by another
            model (e.g. the teacher that indexed the gallery): each query is
            ranked against the N - 1 other gallery items, its own item
            excluded (the asymmetric protocol). `None` (or the queries
            themselves) gives the symmetric number.
        metric: `"euclidean"` (the paper; squared distance ranks the same) or
            `"cosine"`.
        batch_size: Queries per chunk; peak memory is a few `batch_size × N`
            float32 arrays (measured: 135 MB extra at N = 20,000).

    Returns:
        `{K: recall}` with recalls in [0, 1].

    Raises:
        ValueError: an embedding row holds NaN or Inf (the message counts
            them), a K is not an integer in [1, N - 1], or the gallery's
            shape differs from the queries'.

    Example:
    >>> recall_at_k([[0.0], [0.1], [5.0], [5.2]], [0, 0, 1, 1], ks=(1, 2))
    {1: 1.0, 2: 1.0}
    """
    embeddings, labels, gallery = _prepare(embeddings, labels, metric, batch_size, gallery)
    ks = _check_ks(ks, int(labels.shape[0]))
    n = int(labels.shape[0])
    hits = np.zeros(len(ks))
    for first, scores in _chunks(embeddings, batch_size, gallery):
        # top_k returns the lower index first among equal scores.
        _, nearest = tf.math.top_k(scores, k=ks[-1])
        queries = labels[first : first + scores.shape[0]]
        same = (tf.gather(labels, nearest) == queries[:, None]).numpy()
        hits += [same[:, :k].any(axis=1).sum() for k in ks]
    return {k: float(h / n) for k, h in zip(ks, hits)}


def _check_ks(ks, items: int | None = None) -> list:
    """The K of Recall@K, sorted and distinct, if each is an integer in [1, items - 1].

    Each query has `items - 1` others, so K must be below the number of items.
    A float (1.5) or a boolean is refused, not truncated.
    """
    try:
        values = list(ks)
    except TypeError:
        raise ValueError(f"ks must be a list of integers K >= 1, received {ks!r}.") from None
    if not values:
        raise ValueError("ks must hold at least one K, received none.")
    high = None if items is None else items - 1
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or (high is not None and k > high):
            where = f"[1, N - 1] = [1, {high}] (each query has N - 1 others)" if high is not None else ">= 1"
            raise ValueError(f"Every K must be an integer in {where}, received {values}.")
    return sorted({int(k) for k in values})


def _ranked_relevance(embeddings, labels, batch_size, gallery):
    """Yields, per chunk, the relevance of every item in rank order and R per query."""
    _, inverse = np.unique(labels.numpy(), return_inverse=True)
    counts = np.bincount(inverse)
    for first, scores in _chunks(embeddings, batch_size, gallery):
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        queries = labels[first : first + scores.shape[0]]
        relevant = (tf.gather(labels, order) == queries[:, None]).numpy()[:, :-1]  # last: the query itself
        yield relevant, counts[inverse[first : first + scores.shape[0]]] - 1


def map_at_r(embeddings, labels, *, gallery=None, metric: str = "euclidean", batch_size: int = 512) -> float:
    """MAP@R (Musgrave et al. 2020): mean over queries of the average precision in the first R.

    R is the number of other items of the query's class; queries whose class
    has no other item are left out. Embeddings holding NaN or Inf are refused,
    and `gallery` ranks each query against other models' embeddings of the
    other items, as in `recall_at_k`.
    """
    embeddings, labels, gallery = _prepare(embeddings, labels, metric, batch_size, gallery)
    return _mean_over_queries(embeddings, labels, batch_size, gallery, _average_precision_at_r)


def r_precision(embeddings, labels, *, gallery=None, metric: str = "euclidean", batch_size: int = 512) -> float:
    """R-precision: mean over queries of the share of relevant items among the first R.

    `gallery` as in `recall_at_k`.
    """
    embeddings, labels, gallery = _prepare(embeddings, labels, metric, batch_size, gallery)
    return _mean_over_queries(embeddings, labels, batch_size, gallery, _precision_at_r)


def _average_precision_at_r(relevant, r):
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks
    within = ranks[None, :] <= r[:, None]
    return (precision * relevant * within).sum(axis=1) / r


def _precision_at_r(relevant, r):
    hits = np.cumsum(relevant, axis=1)
    return hits[np.arange(len(r)), r - 1] / r


def _mean_over_queries(embeddings, labels, batch_size, gallery, per_query):
    total, count = 0.0, 0
    for relevant, r in _ranked_relevance(embeddings, labels, batch_size, gallery):
        keep = r > 0
        if keep.any():
            total += per_query(relevant[keep], r[keep]).sum()
            count += int(keep.sum())
    if count == 0:
        raise ValueError("No query has another item of its class; MAP@R and R-precision are undefined.")
    return float(total / count)


class FewShotAccuracy(NamedTuple):
    """`few_shot_accuracy`'s result: the mean accuracy over episodes and its 95 % confidence half-width."""

    accuracy: float
    half_width: float


def few_shot_accuracy(
    embeddings, labels, *, ways: int = 5, shots: int = 1, queries: int = 15, episodes: int = 600, seed: int = 0
) -> FewShotAccuracy:
    """Few-shot classification accuracy over seeded episodes, as prototypical networks (Snell et al. 2017) measure it.

    Each episode draws `ways` classes, and of each `shots` support and
    `queries` query items, all distinct. A class's prototype is the mean of
    its support embeddings; each query is given the class of the nearest
    prototype by squared Euclidean distance (ties to the first drawn class).
    The paper's few-shot section reports the mean over 1,000 episodes
    (Omniglot) or 600 (miniImageNet) with `1.96 · std / √episodes`, the
    sample standard deviation of the episodes' accuracies, as the official
    code (jakesnell/prototypical-networks) does.

    Args:
        embeddings: `(N, D)` embeddings of the unseen classes' items.
        labels: `(N,)` class labels.
        ways: Classes per episode, at least 2.
        shots: Support items per class.
        queries: Query items per class.
        episodes: Episodes to average, at least 2 (the interval needs a spread).
        seed: Seed of the episodes: the same seed draws the same episodes.

    Returns:
        `FewShotAccuracy(accuracy, half_width)`, both in [0, 1]: the
        interval is `accuracy ± half_width`.

    Raises:
        ValueError: fewer than `ways` classes have `shots + queries` items (the
            message counts them), embeddings hold NaN or Inf, or an argument
            is out of range.

    Example:
    >>> points = [[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]]
    >>> few_shot_accuracy(points, [0, 0, 0, 1, 1, 1], ways=2, shots=1, queries=2, episodes=10)
    FewShotAccuracy(accuracy=1.0, half_width=0.0)
    """
    ways, shots = check_int("ways", ways, low=2), check_int("shots", shots, low=1)
    queries, episodes = check_int("queries", queries, low=1), check_int("episodes", episodes, low=2)
    seed = check_int("seed", seed, low=0)
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(
            f"Expected embeddings (N, D) and N labels, received embeddings of shape "
            f"{embeddings.shape} and {len(labels)} labels."
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("Embeddings hold NaN or Inf values, so no distance to them is defined; check the model.")
    classes, members = np.unique(labels, return_inverse=True)
    by_class = [np.flatnonzero(members == c) for c in range(len(classes))]
    per_class = shots + queries
    eligible = [items for items in by_class if len(items) >= per_class]
    if len(eligible) < ways:
        raise ValueError(
            f"A {ways}-way {shots}-shot episode with {queries} queries needs {ways} classes of at least "
            f"{per_class} items each; {len(eligible)} of the {len(classes)} classes have that many. Lower "
            "ways, shots or queries, or embed more items per class."
        )
    rng = np.random.default_rng(seed)
    accuracies = np.empty(episodes)
    for episode in range(episodes):
        chosen = rng.choice(len(eligible), ways, replace=False)
        drawn = np.stack([rng.choice(eligible[c], per_class, replace=False) for c in chosen])  # (ways, per_class)
        prototypes = embeddings[drawn[:, :shots]].mean(axis=1)  # (ways, D)
        query = embeddings[drawn[:, shots:]].reshape(ways * queries, -1)
        distances = ((query[:, None, :] - prototypes[None, :, :]) ** 2).sum(axis=2)
        predicted = distances.argmin(axis=1)
        accuracies[episode] = np.mean(predicted == np.repeat(np.arange(ways), queries))
    half_width = 1.96 * accuracies.std(ddof=1) / math.sqrt(episodes)
    return FewShotAccuracy(float(accuracies.mean()), float(half_width))


def embed(model, data, *, batch_size: int = 256):
    """Embeds evaluation data with a model; returns `(embeddings, labels)` as NumPy arrays.

    A `Distiller` embeds with its student. A dataset is read in one pass, so
    embeddings and labels stay paired even when it reshuffles at every pass;
    its last, smaller batch is padded to the others' size so the model is
    traced once.

    Args:
        model: A Keras model from inputs to `(batch, D)` embeddings, or a
            `Distiller`.
        data: `(inputs, labels)` arrays, or a finite `tf.data.Dataset` of
            batched `(inputs, labels)`.
        batch_size: Batch size to embed arrays with.

    Returns:
        `(embeddings, labels)`: `(N, D)` and `(N,)` arrays.

    Example:
    ```python
    embeddings, labels = embed(student, test.batch(256))
    recalls = recall_at_k(embeddings, labels)
    ```
    """
    model = getattr(model, "student", model)
    check_int("batch_size", batch_size, low=1)
    if not isinstance(data, tf.data.Dataset):
        images, labels = _check_arrays(data)
        return model.predict(images, batch_size=batch_size, verbose=0), np.asarray(labels).reshape(-1)
    embeddings, labels, size = [], [], None
    # NumPy batches: JAX's and PyTorch's predict take arrays, not TensorFlow tensors.
    for images, batch_labels in data.as_numpy_iterator():
        count = len(batch_labels)
        size = size or count
        if count < size:
            images = np.concatenate([images, np.zeros((size - count, *images.shape[1:]), images.dtype)])
        embeddings.append(np.asarray(model.predict_on_batch(images))[:count])
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not labels:
        raise ValueError("The evaluation dataset is empty: nothing to embed.")
    return np.concatenate(embeddings), np.concatenate(labels)


def _check_arrays(data):
    try:
        images, labels = data
    except (TypeError, ValueError):
        raise ValueError(
            f"Evaluation data must be (inputs, labels) arrays or a batched tf.data.Dataset, received {type(data).__name__}."
        ) from None
    if len(images) != len(labels) or len(labels) < 2:
        raise ValueError(
            f"Retrieval needs at least 2 evaluation items with one label each, received "
            f"{len(images)} items and {len(labels)} labels."
        )
    return images, labels


class _QueryAndGallery:
    """Embeds each batch with the query model and the gallery model side by side, in one pass.

    One pass keeps the two embeddings of an item paired even when the dataset
    reshuffles at every pass; `embed` sees their concatenation.
    """

    def __init__(self, model, gallery_model):
        self.model = getattr(model, "student", model)
        self.gallery_model = getattr(gallery_model, "student", gallery_model)

    def predict(self, images, batch_size, verbose=0):
        return self._join(self.model.predict(images, batch_size=batch_size, verbose=verbose),
                          self.gallery_model.predict(images, batch_size=batch_size, verbose=verbose))

    def predict_on_batch(self, images):
        return self._join(self.model.predict_on_batch(images), self.gallery_model.predict_on_batch(images))

    def _join(self, queries, gallery):
        queries, gallery = np.asarray(queries), np.asarray(gallery)
        if queries.shape != gallery.shape:
            raise ValueError(
                f"The gallery model embeds to shape {gallery.shape[1:]} and the model to {queries.shape[1:]}; "
                "asymmetric retrieval needs a gallery model of the same width (e.g. the teacher of a student "
                "of the teacher's width)."
            )
        return np.concatenate([queries, gallery], axis=1)


def embed_with_gallery(model, gallery_model, data, *, batch_size: int = 256):
    """Embeds evaluation data with a query model and a gallery model in one pass, as `embed` does.

    Returns:
        `(queries, gallery, labels)`: `(N, D)`, `(N, D)` and `(N,)` arrays,
        row i of both embeddings from item i, for
        `recall_at_k(queries, labels, gallery=gallery)`.

    Raises:
        ValueError: the two models embed to different widths.
    """
    joined, labels = embed(_QueryAndGallery(model, gallery_model), data, batch_size=batch_size)
    queries, gallery = np.split(joined, 2, axis=1)
    return queries, gallery, labels


class RetrievalRecall(keras.callbacks.Callback):
    """Writes Recall@K on held-out data into the logs at each epoch end.

    The embeddings come from the model being trained, or from its `student`
    when it is a `Distiller`. Logs get `{prefix}recall_at_{K}` (by default
    `val_recall_at_1`, ...), so History, EarlyStopping, ModelCheckpoint and
    keras-tuner see them: put this callback before those. With a
    `gallery_model` (e.g. the teacher that indexed the gallery) the logs also
    get `{prefix}asym_recall_at_{K}`: the model's embeddings query the gallery
    model's embeddings of the other items (`recall_at_k(..., gallery=...)`).

    Args:
        data: `(images, labels)` arrays, or a finite `tf.data.Dataset` of
            batched `(images, labels)` (read once per epoch).
        ks: The K values.
        metric: `"euclidean"` or `"cosine"`.
        batch_size: Batch size to embed arrays with.
        prefix: Prefix of the log keys.
        verbose: Print the recalls at each epoch end.
        gallery_model: Optional model of the same embedding width that
            embeds the gallery (asymmetric protocol).

    Example:
    ```python
    recall = RetrievalRecall((test_images, test_labels))
    stop = keras.callbacks.EarlyStopping("val_recall_at_1", mode="max", patience=3)
    distiller.fit(train, epochs=50, callbacks=[recall, stop])
    ```
    """

    def __init__(
        self, data, ks=(1, 2, 4, 8), *, metric="euclidean", batch_size=256, prefix="val_", verbose=0, gallery_model=None
    ):
        super().__init__()
        if not isinstance(data, tf.data.Dataset):
            data = _check_arrays(data)
            ks = _check_ks(ks, len(data[1]))
        self.data, self.ks = data, tuple(_check_ks(ks))
        self.metric = check_choice("metric", metric, METRICS)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.prefix, self.verbose = prefix, verbose
        self.gallery_model = getattr(gallery_model, "student", gallery_model)

    def __deepcopy__(self, memo):
        # keras-tuner copies callbacks for every trial: share the read-only data.
        clone = copy.copy(self)
        clone._model = None
        return clone

    def embed(self, model=None):
        """`embed(model, self.data)`; `model` defaults to the model being trained."""
        return embed(model or self.model, self.data, batch_size=self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        if self.gallery_model is None:
            recalls = recall_at_k(*self.embed(), self.ks, metric=self.metric)
            values = {f"{self.prefix}recall_at_{k}": value for k, value in recalls.items()}
        else:
            queries, gallery, labels = embed_with_gallery(
                self.model, self.gallery_model, self.data, batch_size=self.batch_size
            )
            recalls = recall_at_k(queries, labels, self.ks, metric=self.metric)
            asymmetric = recall_at_k(queries, labels, self.ks, gallery=gallery, metric=self.metric)
            values = {f"{self.prefix}recall_at_{k}": value for k, value in recalls.items()}
            values.update({f"{self.prefix}asym_recall_at_{k}": value for k, value in asymmetric.items()})
        if logs is not None:
            logs.update(values)
        if self.verbose:
            print(" - ".join(f"{name}: {value:.4f}" for name, value in values.items()))
