"""Exact Recall@K at Stanford Online Products size, per backend and with FAISS: time ÷ one N×N×D matmul, peak memory.

Run: .venv/bin/python benchmarks/recall_at_k.py [--items 60502] [--dim 128] [--subset 5000]
                                                [--backends tensorflow jax] [--faiss | --no-faiss]

Random embeddings around per-class centres, SOP-like labels (5 images per class). Each row runs in a
fresh process and is timed against one float32 N×N×D matmul of the same embeddings, computed in the
same process in row blocks of 2,048 (the N×N result is not kept: at SOP size it is 14 GB): on the
row's Keras backend for the exact rows, with NumPy for the FAISS rows. A time is the second of two
calls (the first traces and compiles); peak memory is the process's peak RSS during the first call
above its level before it. Every row's Recall@1..8 is compared with TensorFlow's, and FAISS IVF
(approximate) also with the exact 8 nearest neighbours of each query ("top-8 recall"). The baseline
of the official code, one N×N float32 distance matrix and a sort of each row, is run on a `--subset`
of items, where its recalls must equal ours exactly.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import in_fresh_process  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np
from rkd_keras.retrieval import nearest_neighbours, recall_at_k

part, search, n, dim, subset = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
labels = np.arange(n) // 5
# Each class near its own centre, so recalls are far from 0 and 1.
centres = rng.normal(size=(labels[-1] + 1, dim))
embeddings = (0.6 * centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)
BLOCK = 2048


def brute_force(x, y, ks=(1, 2, 4, 8)):
    # Official form: full distance matrix, self excluded, top-K by sorting.
    x = x.astype(np.float64)
    squared = (x * x).sum(1)
    distances = squared[:, None] + squared[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, : max(ks)]
    hit = y[order] == y[:, None]
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}


def matmul_seconds(x, use_numpy):
    # One float32 N×N×D product, row block by row block, each block waited for.
    if use_numpy:
        xt = np.ascontiguousarray(x.T)
        run = lambda: [x[f : f + BLOCK] @ xt for f in range(0, len(x), BLOCK)]
    else:
        import keras
        ops = keras.ops
        xt = ops.convert_to_tensor(np.ascontiguousarray(x.T))
        blocks = [ops.convert_to_tensor(x[f : f + BLOCK]) for f in range(0, len(x), BLOCK)]
        run = lambda: [ops.convert_to_numpy(ops.matmul(b, xt)[0, 0]) for b in blocks]
    run()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


row = {}
if part == "subset":
    x, y = embeddings[:subset], labels[:subset]
    recall_at_k(x, y)
    start = time.perf_counter()
    row["ours"] = recall_at_k(x, y)
    row["seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    row["brute"] = brute_force(x, y)
    row["brute_seconds"] = time.perf_counter() - start
else:
    import keras
    row["backend"] = keras.backend.backend() if search == "exact" else "numpy/faiss"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    recall_at_k(embeddings, labels, search=search)  # traces and compiles; its peak memory is reported
    row["extra"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    start = time.perf_counter()
    recalls = recall_at_k(embeddings, labels, search=search)
    row["seconds"] = time.perf_counter() - start
    row["recalls"] = list(recalls.values())
    row["keys"] = [str(key) for key in recalls]
    row["matmul_seconds"] = matmul_seconds(embeddings, use_numpy=search != "exact")
    if search == "faiss_ivf":
        exact = nearest_neighbours(embeddings, 8, search="faiss_flat")
        found = nearest_neighbours(embeddings, 8, search="faiss_ivf")
        row["top8_recall"] = float(np.mean([len(set(a) & set(b)) for a, b in zip(exact, found)]) / 8)
print(json.dumps(row))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--faiss", action=argparse.BooleanOptionalAction, default=True,
                        help="also FAISS flat (exact) and IVF (approximate); needs faiss-cpu")
    args = parser.parse_args()
    common = (args.items, args.dim, args.subset)
    rows = [("exact", in_fresh_process(CHILD, "full", "exact", *common, backend=b)) for b in args.backends]
    if args.faiss:
        rows += [(search, in_fresh_process(CHILD, "full", search, *common)) for search in ("faiss_flat", "faiss_ivf")]
    reference = next((row["recalls"] for search, row in rows if row.get("backend") == "tensorflow"), None)
    matrix = 4 * args.items**2
    print(f"N = {args.items}, D = {args.dim}; one N×N float32 matrix would be {matrix / 2**20:,.0f} MB\n")
    print(f"{'search':<10} {'backend':<11} | {'time s':>7} {'matmul s':>8} {'÷ matmul':>8} | {'peak extra MB':>13} | "
          f"{'Recall@1..8':<31} {'= TF':>4} | top-8 recall")
    for search, row in rows:
        equal = "—" if reference is None else ("yes" if row["recalls"] == reference else "NO")
        label = "exact" if search != "faiss_ivf" else "APPROX"
        recalls = ", ".join(f"{v:.4f}" for v in row["recalls"])
        print(f"{search:<10} {row['backend']:<11} | {row['seconds']:>7.2f} {row['matmul_seconds']:>8.2f} "
              f"{row['seconds'] / row['matmul_seconds']:>7.2f}× | {row['extra'] / 2**20:>13.0f} | "
              f"{recalls:<31} {equal:>4} | {row.get('top8_recall', 1.0):.4f} ({label})")
    part = in_fresh_process(CHILD, "subset", "exact", *common)
    print(f"\nsubset of {args.subset} (TensorFlow): ours {part['seconds']:.2f} s, brute force "
          f"{part['brute_seconds']:.2f} s (ratio {part['brute_seconds'] / part['seconds']:.1f}×)")
    for k, value in part["ours"].items():
        print(f"  Recall@{k}: ours {value:.6f}, brute force {part['brute'][k]:.6f}, "
              f"{'equal' if value == part['brute'][k] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
