"""Retrieval metrics (Recall@K, MAP@R, R-precision), few-shot accuracy, `embed`, and a Keras callback.

Every item queries all the others, itself excluded by index, so duplicate
embeddings are handled. The metrics run on the running Keras backend
(`keras.ops`: TensorFlow, JAX or PyTorch, on its default device), one chunk of
queries at a time: memory stays at a few `batch_size × N` scores, never N × N.
They are exact: items are ranked by their float32 distance, ties by the lower
item index, and every backend gives the same ranking. Embeddings are first
scaled by a power of two (exact, so rankings are unchanged), so that their
squared distances neither overflow nor underflow float32 at any finite scale.

`recall_at_k(..., search="faiss_flat")` searches with FAISS (the `faiss` extra)
and is exact too; `search="faiss_ivf"` is approximate, and its keys say so.
This module does not import TensorFlow (a `tf.data.Dataset` that the caller
made is read through its own methods), so JAX and PyTorch users evaluate
without it.
"""

import contextlib
import copy
import math
import sys
from typing import NamedTuple

import keras
import numpy as np

from rkd_keras.checks import check_choice, check_int

METRICS = ("euclidean", "cosine")
# "exact": keras.ops on the running backend; "faiss_flat": FAISS's exact flat index;
# "faiss_ivf": FAISS's inverted-file index, approximate (its Recall@K keys say "approx").
SEARCHES = ("exact", "faiss_flat", "faiss_ivf")


def _prepare(embeddings, labels, metric, batch_size, gallery=None):
    """Query embeddings, labels and gallery (the queries themselves by default) as scaled float32 NumPy arrays."""
    queries, labels = _prepare_one(embeddings, labels, metric, batch_size)
    if gallery is None:
        queries = _scale(queries, queries, metric)[0]
        return queries, labels, queries
    gallery_shape, query_shape = np.shape(gallery), queries.shape
    if gallery_shape != query_shape:
        raise ValueError(
            f"The gallery must hold the same N items as the queries, embedded to the same width: expected shape "
            f"{query_shape}, received {gallery_shape}; embed the same data with a model of the student's width."
        )
    queries, gallery = _scale(queries, _prepare_one(gallery, labels, metric, batch_size)[0], metric)
    return queries, labels, gallery


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
    return embeddings, labels


def _scale(queries, gallery, metric):
    """The embeddings times a power of two that brings their largest magnitude into [0.5, 1).

    A power of two multiplies exactly, so the ranking is the one of the
    embeddings as given; without it, squared distances overflow float32 from
    about 1e19 and underflow below about 1e-20. Euclidean: one factor for
    queries and gallery, whose distances are compared. Cosine: one factor
    per row (the norm of a row ×1e19 overflows, of a row ×1e-20 underflows),
    then unit rows.
    """
    if metric == "cosine":
        scaled = [_times_power_of_two(x, np.max(np.abs(x), axis=1, keepdims=True)) for x in (queries, gallery)]
        return tuple(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in scaled)
    largest = max(float(np.max(np.abs(queries))), float(np.max(np.abs(gallery))))
    return _times_power_of_two(queries, largest), _times_power_of_two(gallery, largest)


def _times_power_of_two(x, largest):
    _, exponent = np.frexp(largest)  # largest = mantissa · 2**exponent, mantissa in [0.5, 1); 0 gives 0
    return np.ldexp(x, -exponent).astype(np.float32)


def _ranked(values, indices, rows, needed, row_scores):
    """The nearest other items of each query in exact rank order (score descending, then index), from candidates.

    `values`/`indices` are each query's `m` best scores and their items, in
    any order among equal scores (TensorFlow's top-k returns the lower index
    first, PyTorch's and FAISS's promise nothing), `rows` the queries' own
    items. The own item is dropped and the rest sorted by (score, index). The
    first `needed[i]` of row i are then exact unless the last of them ties
    with the next (an equal score may lie outside the candidates): those rows
    are ranked again from all their scores, `row_scores(local_rows)`.

    Returns:
        `(len(rows), m - 1)` item indices (-1: no item, from an IVF index).
    """
    own, missing = indices == rows[:, None], indices < 0
    values = np.where(missing, -np.inf, values)
    # Sort keys, the last first: the own item last, then score descending, then index (a missing one last).
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, indices), -values, own), axis=1)[:, :-1]
    values, indices = np.take_along_axis(values, order, 1), np.take_along_axis(indices, order, 1)
    columns = indices.shape[1]
    last = np.clip(needed - 1, 0, columns - 1)[:, None]
    after = np.clip(needed, 0, columns - 1)[:, None]
    tied = (needed >= 1) & (needed < columns) & (
        np.take_along_axis(values, last, 1)[:, 0] == np.take_along_axis(values, after, 1)[:, 0]
    )
    if tied.any():
        local = np.flatnonzero(tied)
        scores = np.array(row_scores(local), np.float32)
        scores[np.arange(len(local)), rows[local]] = -np.inf
        # Stable sort of the negated scores: descending, equal scores by lower index.
        indices[local] = np.argsort(-scores, axis=1, kind="stable")[:, :columns]
    return indices


def _exact_chunks(queries, gallery, depth, batch_size, needed_of):
    """Yields (first query, its chunk's `depth` nearest other items in exact rank order), by keras.ops.

    Scores are `2·q·x − ‖x‖²`, which ranks items exactly as the squared
    Euclidean distance `‖q‖² + ‖x‖² − 2·q·x` does, with two fewer
    chunk-sized temporaries; the backend's top-k picks the candidates.
    """
    ops = keras.ops
    n, dim = gallery.shape
    candidates = min(depth + 2, n)  # the own item, and one more to see ties at the last needed rank
    # Padding columns to whole blocks score −∞ (a zero row of norm +∞), below every item.
    padded = -n % _BLOCK
    gallery_t = ops.convert_to_tensor(np.concatenate([gallery, np.zeros((padded, dim), np.float32)]).T.copy())
    norms = np.concatenate([np.sum(gallery * gallery, axis=1, dtype=np.float32), np.full(padded, np.inf, np.float32)])
    norms = ops.convert_to_tensor(norms)
    for first in range(0, len(queries), batch_size):
        chunk = ops.convert_to_tensor(2.0 * queries[first : first + batch_size])  # ×2 is exact
        with _float32_matmul():
            scores = ops.matmul(chunk, gallery_t) - norms[None, :]
        values, indices = _top_candidates(scores, candidates)
        rows = np.arange(first, first + int(chunk.shape[0]))
        yield first, _ranked(
            ops.convert_to_numpy(values), ops.convert_to_numpy(indices).astype(np.int64), rows,
            needed_of(rows), lambda local: ops.convert_to_numpy(ops.take(scores, local, axis=0))[:, :n],
        )


_BLOCK = 64


def _top_candidates(scores, m):
    """The `m` best scores of each row and their columns (any order among ties), via block maxima on long rows.

    A top-k over all N columns cost as much as the matmul on TensorFlow's
    CPU. Instead: the maximum of each block of 64 columns, the `m` blocks of
    the highest maxima, and a top-k over their 64·m columns. Exact: the `m`
    chosen maxima are `m` distinct columns, so any column left out scores at
    most the m-th best candidate, as with a plain top-k (ties included).
    """
    ops = keras.ops
    rows, columns = int(scores.shape[0]), int(scores.shape[1])
    blocks = columns // _BLOCK
    if blocks < 4 * m:
        return ops.top_k(scores, k=m)
    blocked = ops.reshape(scores, (rows * blocks, _BLOCK))
    _, best = ops.top_k(ops.reshape(ops.max(blocked, axis=1), (rows, blocks)), k=m)
    # Row r's block b is row r·blocks + b of `blocked`: one gather (take_along_axis was 5× slower on TensorFlow).
    best = ops.convert_to_numpy(best) + np.arange(rows)[:, None] * blocks
    gathered = ops.take(blocked, ops.convert_to_tensor(best.reshape(-1)), axis=0)  # (rows·m, 64)
    values, local = ops.top_k(ops.reshape(gathered, (rows, m * _BLOCK)), k=m)
    local = ops.convert_to_numpy(local)
    block_of = np.take_along_axis(best, local // _BLOCK, axis=1) - np.arange(rows)[:, None] * blocks
    return values, block_of * _BLOCK + local % _BLOCK


def _float32_matmul():
    """JAX on a GPU multiplies float32 in TensorFloat-32 by default, whose rounding would change the ranking."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_matmul_precision("float32")
    return contextlib.nullcontext()


def _faiss_chunks(queries, gallery, depth, batch_size, needed_of, search, nlist, nprobe):
    """As `_exact_chunks`, with a FAISS flat (exact) or IVF (approximate) index of the gallery."""
    faiss = _import_faiss()
    n, dim = gallery.shape
    if search == "faiss_flat":
        index = faiss.IndexFlatL2(dim)
    else:
        nlist = check_int("nlist", nlist if nlist is not None else max(1, round(4 * math.sqrt(n))), low=1)
        if nlist > n:
            raise ValueError(f"nlist must be at most N = {n} (one item per list at least), received {nlist}.")
        check_int("nprobe", nprobe, low=1)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.train(gallery)
        index.nprobe = min(nprobe, nlist)
    index.add(gallery)
    candidates = min(depth + 2, n)
    norms = np.sum(gallery * gallery, axis=1, dtype=np.float32)
    for first in range(0, len(queries), batch_size):
        chunk = queries[first : first + batch_size]
        distances, indices = index.search(chunk, candidates)
        rows = np.arange(first, first + len(chunk))
        if search == "faiss_ivf":  # approximate anyway: no exact re-ranking of ties
            needed = np.zeros(len(rows), np.int64)
        else:
            needed = needed_of(rows)
        yield first, _ranked(
            -distances, indices.astype(np.int64), rows, needed,
            lambda local: 2.0 * chunk[local] @ gallery.T - norms[None, :],
        )


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            'search="faiss_flat" and "faiss_ivf" need FAISS: pip install "rkd-keras[faiss]" (faiss-cpu), '
            'or use search="exact".'
        ) from None
    return faiss


def _neighbour_chunks(queries, gallery, depth, batch_size, needed_of, search="exact", nlist=None, nprobe=16):
    check_choice("search", search, SEARCHES)
    if search == "exact":
        return _exact_chunks(queries, gallery, depth, batch_size, needed_of)
    return _faiss_chunks(queries, gallery, depth, batch_size, needed_of, search, nlist, nprobe)


def nearest_neighbours(
    embeddings, k: int, *, gallery=None, metric: str = "euclidean", batch_size: int = 512, search: str = "exact",
    nlist: int | None = None, nprobe: int = 16,
) -> np.ndarray:
    """The K nearest other items of every item, in rank order (distance, then the lower index).

    Args:
        embeddings: `(N, D)` embeddings.
        k: How many neighbours, in [1, N - 1]; `gallery`, `metric`,
            `batch_size`, `search`, `nlist` and `nprobe` are as in `recall_at_k`.

    Returns:
        `(N, K)` int64 item indices; with `search="faiss_ivf"`, -1 where the
        probed lists held fewer than K other items.

    Example:
    >>> nearest_neighbours([[0.0], [0.1], [5.0], [5.2]], 1)[:, 0].tolist()
    [1, 0, 3, 2]
    """
    labels = np.arange(len(embeddings))
    queries, _, gallery = _prepare(embeddings, labels, metric, batch_size, gallery)
    k = _check_ks((k,), len(labels))[0]
    needed = lambda rows: np.full(len(rows), k)  # noqa: E731
    chunks = _neighbour_chunks(queries, gallery, k, batch_size, needed, search, nlist, nprobe)
    return np.concatenate([nearest[:, :k] for _, nearest in chunks])


def recall_at_k(
    embeddings, labels, ks=(1, 2, 4, 8), *, gallery=None, metric: str = "euclidean", batch_size: int = 512,
    search: str = "exact", nlist: int | None = None, nprobe: int = 16,
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
            float32 arrays beside the embeddings.
        search: `"exact"` (keras.ops on the running backend), `"faiss_flat"`
            (FAISS's exact flat index, the same numbers) or `"faiss_ivf"`
            (FAISS's inverted-file index: approximate, so the keys are
            `"approx_recall_at_K"`, never K).
        nlist: `faiss_ivf`'s number of lists (default about 4·√N).
        nprobe: `faiss_ivf`'s lists searched per query.

    Returns:
        `{K: recall}` with recalls in [0, 1]; `{"approx_recall_at_K": recall}`
        with `search="faiss_ivf"`.

    Raises:
        ValueError: an embedding row holds NaN or Inf (the message counts
            them), a K is not an integer in [1, N - 1], or the gallery's
            shape differs from the queries'.

    Example:
    >>> recall_at_k([[0.0], [0.1], [5.0], [5.2]], [0, 0, 1, 1], ks=(1, 2))
    {1: 1.0, 2: 1.0}
    """
    embeddings, labels, gallery = _prepare(embeddings, labels, metric, batch_size, gallery)
    n = len(labels)
    ks = _check_ks(ks, n)
    needed = lambda rows: np.full(len(rows), ks[-1])  # noqa: E731
    hits = np.zeros(len(ks))
    for first, nearest in _neighbour_chunks(embeddings, gallery, ks[-1], batch_size, needed, search, nlist, nprobe):
        found = nearest[:, : ks[-1]]
        same = (found >= 0) & (labels[found] == labels[first : first + len(found), None])
        hits += [same[:, :k].any(axis=1).sum() for k in ks]
    key = (lambda k: f"approx_recall_at_{k}") if search == "faiss_ivf" else (lambda k: k)
    return {key(k): float(h / n) for k, h in zip(ks, hits)}


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
    """Yields, per chunk, the relevance of the first R items in rank order and R per query.

    Only the first R of a query's ranking count, so the backend's top-k finds
    the largest R's worth of candidates: O(chunk × N), not a sort of each row.
    """
    _, inverse = np.unique(labels, return_inverse=True)
    r_of = np.bincount(inverse)[inverse] - 1
    depth = max(int(r_of.max()), 1)
    for first, nearest in _neighbour_chunks(embeddings, gallery, depth, batch_size, lambda rows: r_of[rows]):
        rows = np.arange(first, first + len(nearest))
        yield labels[nearest[:, :depth]] == labels[rows, None], r_of[rows]


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
    if not _is_dataset(data):
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


def _is_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset`, without importing TensorFlow (none can exist before it is imported)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


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
    Recall@K is computed on the running Keras backend; `search="faiss_ivf"`
    logs `{prefix}approx_recall_at_{K}` instead, as it is approximate.

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
        search: `"exact"`, `"faiss_flat"` or `"faiss_ivf"`, as in `recall_at_k`.

    Example:
    ```python
    recall = RetrievalRecall((test_images, test_labels))
    stop = keras.callbacks.EarlyStopping("val_recall_at_1", mode="max", patience=3)
    distiller.fit(train, epochs=50, callbacks=[recall, stop])
    ```
    """

    def __init__(
        self, data, ks=(1, 2, 4, 8), *, metric="euclidean", batch_size=256, prefix="val_", verbose=0, gallery_model=None,
        search="exact",
    ):
        super().__init__()
        if not _is_dataset(data):
            data = _check_arrays(data)
            ks = _check_ks(ks, len(data[1]))
        self.data, self.ks = data, tuple(_check_ks(ks))
        self.metric = check_choice("metric", metric, METRICS)
        self.search = check_choice("search", search, SEARCHES)
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
            queries, labels = self.embed()
            values = self._log_values(recall_at_k(queries, labels, self.ks, metric=self.metric, search=self.search))
        else:
            queries, gallery, labels = embed_with_gallery(
                self.model, self.gallery_model, self.data, batch_size=self.batch_size
            )
            values = self._log_values(recall_at_k(queries, labels, self.ks, metric=self.metric, search=self.search))
            asymmetric = recall_at_k(queries, labels, self.ks, gallery=gallery, metric=self.metric, search=self.search)
            values.update(self._log_values(asymmetric, "asym_"))
        if logs is not None:
            logs.update(values)
        if self.verbose:
            print(" - ".join(f"{name}: {value:.4f}" for name, value in values.items()))

    def _log_values(self, recalls, kind=""):
        # An exact recall's key is K; an approximate one's says "approx_recall_at_K".
        return {
            f"{self.prefix}{kind}{key if isinstance(key, str) else f'recall_at_{key}'}": value
            for key, value in recalls.items()
        }
