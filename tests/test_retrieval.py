"""Exact retrieval metrics against brute force, and the RetrievalRecall callback."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from rkd_keras import Distiller, RetrievalRecall, embed, map_at_r, nearest_neighbours, r_precision, recall_at_k


def brute_force_ranking(embeddings, labels, gallery=None):
    """Per query, the other items' labels sorted by distance (to their gallery embeddings), ties by index."""
    e = np.asarray(embeddings, np.float64)
    g = e if gallery is None else np.asarray(gallery, np.float64)
    d = ((e[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    return labels[order] == labels[:, None]


def brute_recall(embeddings, labels, ks, gallery=None):
    relevant = brute_force_ranking(embeddings, labels, gallery)
    return {k: relevant[:, :k].any(axis=1).mean() for k in ks}


def brute_map_and_rp(embeddings, labels, gallery=None):
    relevant = brute_force_ranking(embeddings, labels, gallery)
    maps, rps = [], []
    for row, label in zip(relevant, labels):
        r = int((labels == label).sum()) - 1
        if r == 0:
            continue
        hits = row[:r]
        precisions = np.cumsum(hits) / np.arange(1, r + 1)
        maps.append((precisions * hits).sum() / r)
        rps.append(hits.sum() / r)
    return np.mean(maps), np.mean(rps)


def _datasets():
    rng = np.random.default_rng(3)
    random = (rng.normal(size=(300, 16)), rng.integers(0, 20, 300))
    base = rng.normal(size=(100, 8))
    duplicates = (np.concatenate([base, base, base[:50]]), rng.integers(0, 10, 250))
    # Small integer coordinates: many exactly equal distances.
    ties = (rng.integers(0, 3, size=(200, 3)).astype(float), rng.integers(0, 7, 200))
    # Classes of 1, 2 and 3 items, smaller than the larger K.
    small = (rng.normal(size=(60, 4)), np.repeat(np.arange(30), [1, 2, 3] * 10)[:60])
    return {"random": random, "duplicates": duplicates, "ties": ties, "small_classes": small}


DATA = _datasets()


@pytest.mark.parametrize("batch_size", [7, 1024])
@pytest.mark.parametrize("case", DATA)
def test_recall_at_k_equals_brute_force(case, batch_size):
    embeddings, labels = DATA[case]
    ks = (1, 2, 4, 8, 16)
    ours = recall_at_k(embeddings, labels, ks, batch_size=batch_size)
    expected = brute_recall(embeddings, labels, ks)
    assert ours.keys() == expected.keys()
    for k in ks:
        assert ours[k] == pytest.approx(expected[k], abs=1e-12)


@pytest.mark.parametrize("case", DATA)
def test_map_at_r_and_r_precision_equal_brute_force(case):
    embeddings, labels = DATA[case]
    expected_map, expected_rp = brute_map_and_rp(embeddings, labels)
    assert map_at_r(embeddings, labels, batch_size=13) == pytest.approx(expected_map, abs=1e-12)
    assert r_precision(embeddings, labels, batch_size=13) == pytest.approx(expected_rp, abs=1e-12)


def _teacher_gallery(embeddings, seed=5):
    """The same items "embedded by another model": a rotation of the queries plus noise."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(embeddings.shape[1],) * 2))
    return np.asarray(embeddings) @ rotation * 0.5 + 0.3 * rng.normal(size=np.shape(embeddings))


@pytest.mark.parametrize("batch_size", [7, 1024])
@pytest.mark.parametrize("case", DATA)
def test_asymmetric_recall_at_k_equals_brute_force_with_the_own_item_excluded(case, batch_size):
    embeddings, labels = DATA[case]
    gallery = _teacher_gallery(embeddings)
    ks = (1, 2, 4, 8, 16)
    ours = recall_at_k(embeddings, labels, ks, gallery=gallery, batch_size=batch_size)
    expected = brute_recall(embeddings, labels, ks, gallery)
    for k in ks:
        assert ours[k] == pytest.approx(expected[k], abs=1e-12)
    assert ours != recall_at_k(embeddings, labels, ks, batch_size=batch_size)  # the gallery is used


def test_asymmetric_recall_excludes_the_queries_own_gallery_item():
    # Each query's own gallery item is its exact copy and of another class: were it ranked, R@1 would be 0.
    queries = np.array([[0.0], [0.1], [5.0], [5.1]])
    assert recall_at_k(queries, [0, 0, 1, 1], (1,), gallery=queries + 0.0) == {1: 1.0}
    swapped = queries[[2, 3, 0, 1]]  # item i's gallery embedding sits among the other class's queries
    assert recall_at_k(queries, [0, 0, 1, 1], (1,), gallery=swapped) == {1: 0.0}


@pytest.mark.parametrize("case", DATA)
def test_asymmetric_map_at_r_and_r_precision_equal_brute_force(case):
    embeddings, labels = DATA[case]
    gallery = _teacher_gallery(embeddings)
    expected_map, expected_rp = brute_map_and_rp(embeddings, labels, gallery)
    assert map_at_r(embeddings, labels, gallery=gallery, batch_size=13) == pytest.approx(expected_map, abs=1e-12)
    assert r_precision(embeddings, labels, gallery=gallery, batch_size=13) == pytest.approx(expected_rp, abs=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("case", DATA)
def test_gallery_of_the_queries_gives_the_symmetric_numbers_exactly(case, metric):
    embeddings, labels = DATA[case]
    copy = np.array(embeddings, copy=True)
    assert recall_at_k(embeddings, labels, (1, 4), gallery=copy, metric=metric) == recall_at_k(
        embeddings, labels, (1, 4), metric=metric
    )
    assert map_at_r(embeddings, labels, gallery=copy, metric=metric) == map_at_r(embeddings, labels, metric=metric)
    assert r_precision(embeddings, labels, gallery=copy, metric=metric) == r_precision(embeddings, labels, metric=metric)


@pytest.mark.parametrize(
    "gallery_shape, received", [((10, 3), "(10, 3)"), ((9, 4), "(9, 4)")], ids=["width", "items"]
)
def test_a_gallery_of_another_shape_is_refused(gallery_shape, received):
    with pytest.raises(ValueError, match=re.escape(f"expected shape (10, 4), received {received}")):
        recall_at_k(np.zeros((10, 4)), np.arange(10) % 2, gallery=np.zeros(gallery_shape))


def test_cosine_metric_ranks_by_angle(rng):
    embeddings, labels = rng.normal(size=(100, 8)), rng.integers(0, 5, 100)
    scaled = embeddings * rng.uniform(0.1, 10.0, size=(100, 1))
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert recall_at_k(scaled, labels, metric="cosine") == recall_at_k(unit, labels)


@pytest.mark.parametrize(
    "embeddings, labels, ks, message",
    [
        (np.zeros((5, 2)), np.arange(5), (1, 5), "Every K must be an integer in \\[1, N - 1\\] = \\[1, 4\\]"),
        (np.zeros((1, 2)), np.arange(1), (1,), "at least 2 items"),
        (np.zeros((5, 2)), np.arange(4), (1,), "Expected embeddings \\(N, D\\) and N labels"),
    ],
)
def test_invalid_inputs_raise_value_error(embeddings, labels, ks, message):
    with pytest.raises(ValueError, match=message):
        recall_at_k(embeddings, labels, ks)


def _embedder(dim=6):
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(dim)(inputs))


def test_callback_logs_equal_recall_at_k_and_drive_early_stopping(rng):
    x, y = rng.normal(size=(128, 4)).astype("float32"), rng.integers(0, 4, 128)
    x_val, y_val = rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 4, 60)
    student = _embedder()
    distiller = Distiller(_embedder(12), student)
    distiller.compile(keras.optimizers.Adam(1e-2))
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(recall_at_k(student.predict(x_val, verbose=0), y_val))
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_recall_at_1", mode="max", patience=0)
    history = distiller.fit(
        x, epochs=6, batch_size=32, verbose=0, callbacks=[RetrievalRecall((x_val, y_val)), record, stop]
    ).history
    assert len(history["val_recall_at_1"]) == len(seen) >= 2
    for k in (1, 2, 4, 8):
        assert history[f"val_recall_at_{k}"] == [s[k] for s in seen]
    # patience=0: training stops after the first epoch that does not improve R@1.
    r1 = [s[1] for s in seen]
    no_gain = [e for e in range(1, len(r1)) if r1[e] <= max(r1[:e])]
    assert len(seen) == (no_gain[0] + 1 if no_gain else 6)


def test_callback_is_deep_copyable_and_keeps_shuffled_datasets_paired(rng):
    import copy

    import tensorflow as tf

    x = rng.normal(size=(40, 4)).astype("float32")
    x[:, 0] = np.arange(40)  # the identity model's embedding names its row
    y = rng.integers(0, 3, 40)
    identity = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    # Reshuffled at every pass: embeddings and labels must still stay paired.
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(40).batch(16)
    clone = copy.deepcopy(RetrievalRecall(data))
    embeddings, labels = clone.embed(identity)
    rows = embeddings[:, 0].astype(int)
    assert sorted(rows) == list(range(40))
    np.testing.assert_array_equal(labels, y[rows])
    np.testing.assert_array_equal(embeddings, x[rows])


@pytest.mark.parametrize(
    "data, message",
    [
        (tf.data.Dataset.from_tensor_slices((np.zeros((0, 4), np.float32), np.zeros(0, np.int64))).batch(8),
         "The evaluation dataset is empty: nothing to embed"),
        ((np.zeros((0, 4), np.float32), np.zeros(0, np.int64)), "needs at least 2 evaluation items"),
    ],
    ids=["dataset", "arrays"],
)
def test_empty_evaluation_data_is_a_clear_error(data, message):
    with pytest.raises(ValueError, match=message):
        RetrievalRecall(data).embed(_embedder())


def test_embed_gives_the_students_embeddings_of_arrays_and_datasets_alike(rng):
    x, y = rng.normal(size=(37, 4)).astype("float32"), rng.integers(0, 3, 37)
    student = _embedder()
    distiller = Distiller(_embedder(12), student)
    expected = student.predict(x, verbose=0)
    from_arrays = embed(distiller, (x, y), batch_size=8)
    from_dataset = embed(distiller, tf.data.Dataset.from_tensor_slices((x, y)).batch(10))  # a last batch of 7
    for embeddings, labels in (from_arrays, from_dataset):
        assert embeddings.shape == (37, 6)
        np.testing.assert_allclose(embeddings, expected, atol=1e-6)
        np.testing.assert_array_equal(labels, y)


def test_callback_with_a_gallery_model_logs_asymmetric_recall_next_to_the_symmetric_one(rng):
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 4, 64)
    x_val, y_val = rng.normal(size=(50, 4)).astype("float32"), rng.integers(0, 4, 50)
    teacher, student = _embedder(6), _embedder(6)
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(1e-2))
    # Reshuffled at every pass: the two embeddings of an item must still come from one pass.
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).shuffle(50, seed=1).batch(16)
    history = distiller.fit(
        x, epochs=1, batch_size=32, verbose=0, callbacks=[RetrievalRecall(val, gallery_model=teacher)]
    ).history
    queries, gallery = student.predict(x_val, verbose=0), teacher.predict(x_val, verbose=0)
    expected = recall_at_k(queries, y_val, gallery=gallery)
    symmetric = recall_at_k(queries, y_val)
    for k in (1, 2, 4, 8):
        assert history[f"val_asym_recall_at_{k}"][0] == pytest.approx(expected[k], abs=1e-12)
        assert history[f"val_recall_at_{k}"][0] == pytest.approx(symmetric[k], abs=1e-12)


def test_callback_refuses_a_gallery_model_of_another_width(rng):
    x_val, y_val = rng.normal(size=(20, 4)).astype("float32"), rng.integers(0, 4, 20)
    callback = RetrievalRecall((x_val, y_val), gallery_model=_embedder(12))
    callback.set_model(_embedder(6))
    with pytest.raises(ValueError, match="asymmetric retrieval needs a gallery model of the same width"):
        callback.on_epoch_end(0, {})


@pytest.mark.parametrize("with_gallery", [False, True], ids=["symmetric", "gallery"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("scale", [1e19, 1e-20, 1e30, 1e-30])
def test_metrics_at_extreme_finite_scales_equal_the_metrics_at_scale_one(scale, metric, with_gallery):
    """Squared distances overflowed float32 at ×1e19 and underflowed at ×1e-20 (R@1 0.03 became 0.07 and 0.067)."""
    embeddings, labels = DATA["random"]
    gallery = _teacher_gallery(embeddings) if with_gallery else None
    scaled_gallery = None if gallery is None else gallery * scale
    ks = (1, 2, 4, 8, 16)
    expected = recall_at_k(embeddings, labels, ks, gallery=gallery, metric=metric)
    assert recall_at_k(embeddings * scale, labels, ks, gallery=scaled_gallery, metric=metric) == expected
    if metric == "euclidean":  # and the float64 oracle on the scaled inputs gives the same
        assert expected == pytest.approx(brute_recall(embeddings * scale, labels, ks, scaled_gallery), abs=1e-12)
    for metric_fn in (map_at_r, r_precision):
        assert metric_fn(embeddings * scale, labels, gallery=scaled_gallery, metric=metric) == pytest.approx(
            metric_fn(embeddings, labels, gallery=gallery, metric=metric), abs=1e-12
        )


def test_cosine_ranks_rows_of_very_different_norms_by_angle():
    # A row ×1e-30 was left unnormalised (its norm is below the 1e-12 floor) and ranked as a point near 0.
    embeddings = np.array([[1.0, 0.0], [1e-30, 1e-31], [0.0, 1.0], [1e30, 9e29]])
    labels = np.array([0, 0, 1, 1])
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert recall_at_k(embeddings, labels, (1,), metric="cosine") == recall_at_k(unit, labels, (1,)) == {1: 0.75}
    np.testing.assert_array_equal(nearest_neighbours(embeddings, 3, metric="cosine"), [[1, 3, 2], [0, 3, 2], [3, 1, 0], [1, 0, 2]])


@pytest.mark.parametrize("with_gallery", [False, True], ids=["symmetric", "gallery"])
@pytest.mark.parametrize("case", DATA)
def test_nearest_neighbours_rank_by_distance_then_lower_index(case, with_gallery):
    embeddings, _ = DATA[case]
    gallery = _teacher_gallery(embeddings) if with_gallery else None
    e = np.asarray(embeddings, np.float64)
    g = e if gallery is None else np.asarray(gallery, np.float64)
    d = ((e[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :9]
    np.testing.assert_array_equal(nearest_neighbours(embeddings, 9, gallery=gallery, batch_size=7), expected)


def test_ties_at_the_last_rank_take_the_lower_indices_even_beyond_the_candidates():
    # Item 0 at the origin, items 1-8 all at distance 1 from it (±e1 … ±e4): for K = 3 the top-k
    # candidates (K + 2) hold 5 of the 8 tied items, so the rule must look past them.
    embeddings = np.concatenate([np.zeros((1, 4)), np.eye(4), -np.eye(4)])
    for order in (np.arange(9), np.array([0, 8, 7, 6, 5, 4, 3, 2, 1])):
        np.testing.assert_array_equal(nearest_neighbours(embeddings[order], 3)[0], [1, 2, 3])
        np.testing.assert_array_equal(nearest_neighbours(embeddings[order], 8)[0], np.arange(1, 9))
    labels = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0])  # item 0's only same-class item is the last of the tie
    assert recall_at_k(embeddings, labels, (7, 8)) == pytest.approx(brute_recall(embeddings, labels, (7, 8)), abs=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("case", DATA)
def test_faiss_flat_search_gives_the_exact_recall(case, metric):
    embeddings, labels = DATA[case]
    gallery = _teacher_gallery(embeddings)
    ks = (1, 2, 4, 8, 16)
    for g in (None, gallery):
        exact = recall_at_k(embeddings, labels, ks, gallery=g, metric=metric)
        assert recall_at_k(embeddings, labels, ks, gallery=g, metric=metric, search="faiss_flat", batch_size=7) == exact
    if metric == "euclidean":
        assert exact == pytest.approx(brute_recall(embeddings, labels, ks, gallery), abs=1e-12)


def test_faiss_flat_search_keeps_the_tie_rule():
    embeddings, _ = DATA["ties"]  # small integer coordinates: many exactly equal distances
    np.testing.assert_array_equal(nearest_neighbours(embeddings, 12, search="faiss_flat"), nearest_neighbours(embeddings, 12))


def test_faiss_ivf_recall_is_labelled_approximate_and_exhaustive_probing_gives_the_exact_numbers():
    rng = np.random.default_rng(4)
    embeddings, labels = rng.normal(size=(2000, 8)), np.arange(2000) // 5
    exact = recall_at_k(embeddings, labels)
    everything = recall_at_k(embeddings, labels, search="faiss_ivf", nlist=16, nprobe=16)
    assert everything == {f"approx_recall_at_{k}": value for k, value in exact.items()}
    one_list = recall_at_k(embeddings, labels, search="faiss_ivf", nlist=16, nprobe=1)
    assert set(one_list) == set(everything) and not set(one_list) & {1, 2, 4, 8}
    neighbours = nearest_neighbours(embeddings, 8, search="faiss_ivf", nlist=16, nprobe=1)
    # One list of 16 finds most, not all, of the exact 8 nearest.
    overlap = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(neighbours, nearest_neighbours(embeddings, 8))])
    assert 0.3 < overlap < 1.0


def test_the_callback_logs_an_ivf_recall_under_approximate_keys_only(rng):
    x_val, y_val = rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 4, 60)
    model = _embedder()
    callback = RetrievalRecall((x_val, y_val), ks=(1, 2), search="faiss_ivf")
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert set(logs) == {"val_approx_recall_at_1", "val_approx_recall_at_2"}
    assert RetrievalRecall((x_val, y_val), search="faiss_flat").search == "faiss_flat"


def test_a_missing_faiss_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=re.escape('pip install "rkd-keras[faiss]"')):
        recall_at_k(np.zeros((4, 2)), [0, 0, 1, 1], (1,), search="faiss_flat")


def test_an_unknown_search_is_refused():
    with pytest.raises(ValueError, match="search"):
        recall_at_k(np.zeros((4, 2)), [0, 0, 1, 1], (1,), search="annoy")


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_long_rows_take_their_candidates_from_block_maxima_and_stay_exact(kind):
    # 3,000 items: 47 blocks of 64 columns, enough for the block-maxima top-k of K = 8 (10 candidates).
    rng = np.random.default_rng(12)
    if kind == "ties":  # 4 integer coordinates in [0, 3): about 80 items share each point
        embeddings = rng.integers(0, 3, size=(3000, 4)).astype(float)
    else:
        embeddings = rng.normal(size=(3000, 6))
    labels = rng.integers(0, 50, 3000)
    e = embeddings.astype(np.float64)
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(nearest_neighbours(embeddings, 8, batch_size=256), expected)
    relevant = labels[expected] == labels[:, None]
    assert recall_at_k(embeddings, labels, batch_size=256) == {k: relevant[:, :k].any(axis=1).mean() for k in (1, 2, 4, 8)}
