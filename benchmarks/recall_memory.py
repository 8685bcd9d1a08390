"""Peak extra memory and time of exact Recall@K, against one N×N float32 matrix.

Run: .venv/bin/python benchmarks/recall_memory.py [N ...]   (default 20000)
Each N runs in a fresh process, so the peak RSS it reports is its own.
"""

import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np
import rkd_keras
n = int(sys.argv[1])
rng = np.random.default_rng(0)
embeddings = rng.normal(size=(n, 64)).astype(np.float32)
labels = rng.integers(0, n // 5, n)
rkd_keras.recall_at_k(embeddings[:2000], labels[:2000])  # warm-up: tracing, thread pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
recalls = rkd_keras.recall_at_k(embeddings, labels)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"n": n, "seconds": seconds, "extra": after - before, "r1": recalls[1]}))
"""


def main(sizes):
    print(f"{'N':>7} {'time s':>7} {'peak extra MB':>14} {'N×N float32 MB':>15} {'ratio':>6}")
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        full = 4 * n * n
        print(f"{n:>7} {row['seconds']:>7.2f} {row['extra'] / 2**20:>14.1f} {full / 2**20:>15.1f} {row['extra'] / full:>6.3f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [20000])
