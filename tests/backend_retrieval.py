"""Recall@K, MAP@R, R-precision and nearest neighbours on the Keras backend this process runs, for tests/test_backends.py.

`python tests/backend_retrieval.py OUT.npz` (with `KERAS_BACKEND` set) writes
every case's numbers; the TensorFlow suite calls `compute()` in its own
process. The subprocess blocks `import tensorflow`, as on a machine without
it: `rkd_keras.retrieval` must not need it on JAX or PyTorch.
"""

import sys

import numpy as np


def cases():
    """name → (embeddings, labels, gallery or None): random, duplicate rows, many exact ties, extreme scales."""
    rng = np.random.default_rng(7)
    random = rng.normal(size=(300, 16)), rng.integers(0, 20, 300)
    base = rng.normal(size=(100, 8))
    found = {
        "random": (*random, None),
        "random_gallery": (*random, random[0] @ np.linalg.qr(rng.normal(size=(16, 16)))[0] + 0.3 * rng.normal(size=(300, 16))),
        "duplicates": (np.concatenate([base, base, base[:50]]), rng.integers(0, 10, 250), None),
        # Small integer coordinates: many exactly equal distances, which PyTorch's top-k orders freely.
        "ties": (rng.integers(0, 3, size=(200, 3)).astype(float), rng.integers(0, 7, 200), None),
        # 5,000 items: rows long enough for the block-maxima top-k of Recall@16, with ties (≈ 60 items a point).
        "long_ties": (rng.integers(0, 3, size=(5000, 4)).astype(float), rng.integers(0, 40, 5000), None),
        "random_x1e19": (random[0] * 1e19, random[1], None),
        "random_x1e-20": (random[0] * 1e-20, random[1], None),
    }
    return found


def compute():
    """`{key: array}`: every metric of every case, with both metrics (one for the long case; two chunk sizes for two)."""
    from rkd_keras.retrieval import map_at_r, nearest_neighbours, r_precision, recall_at_k

    out = {}
    for name, (embeddings, labels, gallery) in cases().items():
        for metric in ("euclidean",) if name == "long_ties" else ("euclidean", "cosine"):
            for batch_size in (7, 512) if name in ("random", "ties") else (512,):  # 7: many chunks
                key = f"{name}/{metric}/{batch_size}"
                recalls = recall_at_k(embeddings, labels, (1, 2, 4, 8, 16), gallery=gallery, metric=metric,
                                      batch_size=batch_size)
                out[f"recall/{key}"] = np.array(list(recalls.values()))
                out[f"map_at_r/{key}"] = np.array(map_at_r(embeddings, labels, gallery=gallery, metric=metric,
                                                           batch_size=batch_size))
                out[f"r_precision/{key}"] = np.array(r_precision(embeddings, labels, gallery=gallery, metric=metric,
                                                                 batch_size=batch_size))
                out[f"neighbours/{key}"] = nearest_neighbours(embeddings, 12, gallery=gallery, metric=metric,
                                                              batch_size=batch_size)
    out.update(embedded())
    return out


def embedded():
    """`embed` and `RetrievalRecall` of a fixed Dense model on arrays, through the running backend's predict."""
    import keras

    from rkd_keras import RetrievalRecall, embed

    rng = np.random.default_rng(8)
    images, labels = rng.normal(size=(90, 5)).astype("float32"), rng.integers(0, 6, 90)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    model.set_weights([rng.normal(size=(5, 4)).astype("float32"), rng.normal(size=4).astype("float32")])
    callback = RetrievalRecall((images, labels), ks=(1, 4))
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    return {"embed/embeddings": embed(model, (images, labels), batch_size=32)[0],
            "embed/callback": np.array([logs["val_recall_at_1"], logs["val_recall_at_4"]])}


def main(path):
    sys.modules["tensorflow"] = None  # any `import tensorflow` fails, as on a machine without it
    import keras

    out = compute()
    out["backend"] = np.array(keras.backend.backend())
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
