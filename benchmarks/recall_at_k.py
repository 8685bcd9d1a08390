"""Exact Recall@K at Stanford Online Products size: time, peak memory, and a brute-force check.

Run: .venv/bin/python benchmarks/recall_at_k.py [--items 60502] [--dim 128] [--subset 5000]

Random embeddings around per-class centres, SOP-like labels (5 images per class). The baseline is
the official code's form, one N×N float32 distance matrix and a sort of each
row: it is run on a `--subset` of items (all N would need N²·4 bytes), where
its recalls must equal ours exactly; the table gives its memory for all N.
Peak memory is the process's peak RSS above its level before the call (each
part runs in a fresh process).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import in_fresh_process  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np
import rkd_keras

part, n, dim, subset = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
labels = np.arange(n) // 5
# Each class near its own centre, so recalls are far from 0 and 1.
centres = rng.normal(size=(labels[-1] + 1, dim))
embeddings = (0.6 * centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)
if part == "subset":
    embeddings, labels = embeddings[:subset], labels[:subset]


def brute_force(x, y, ks=(1, 2, 4, 8)):
    # Official form: full distance matrix, self excluded, top-K by sorting.
    x = x.astype(np.float64)
    squared = (x * x).sum(1)
    distances = squared[:, None] + squared[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, : max(ks)]
    hit = y[order] == y[:, None]
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}


rkd_keras.recall_at_k(embeddings[:2000], labels[:2000])  # warm-up: tracing, thread pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
ours = rkd_keras.recall_at_k(embeddings, labels)
row = {"seconds": time.perf_counter() - start,
       "extra": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "ours": ours}
if part == "subset":
    start = time.perf_counter()
    row["brute"] = brute_force(embeddings, labels)
    row["brute_seconds"] = time.perf_counter() - start
print(json.dumps(row))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--subset", type=int, default=5000)
    args = parser.parse_args()
    full = in_fresh_process(CHILD, "full", args.items, args.dim, args.subset)
    part = in_fresh_process(CHILD, "subset", args.items, args.dim, args.subset)
    matrix = 4 * args.items**2
    print(f"{'items':>7} {'D':>4} | {'time s':>7} {'peak extra MB':>13} | {'N×N float32 MB':>14} {'memory ratio':>12}")
    print(f"{args.items:>7} {args.dim:>4} | {full['seconds']:>7.1f} {full['extra'] / 2**20:>13.0f} | "
          f"{matrix / 2**20:>14.0f} {matrix / full['extra']:>11.1f}×")
    print(f"\nsubset of {args.subset}: ours {part['seconds']:.2f} s, brute force {part['brute_seconds']:.2f} s "
          f"(ratio {part['brute_seconds'] / part['seconds']:.1f}×)")
    for k, value in part["ours"].items():
        print(f"  Recall@{k}: ours {value:.6f}, brute force {part['brute'][k]:.6f}, "
              f"{'equal' if value == part['brute'][k] else 'DIFFERENT'}")
    print(f"full set Recall@1..8: {', '.join(f'{v:.4f}' for v in full['ours'].values())}")


if __name__ == "__main__":
    main()
