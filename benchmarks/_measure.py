"""Shared by the benchmark scripts: medians after warm-up, peak tensor memory, fresh processes."""

import json
import statistics
import subprocess
import sys
import time


def median_seconds(fn, repeats=5, budget=20.0):
    """Median wall time of `fn()` after one warm-up call; fewer repeats if slow."""
    fn()
    times = []
    while len(times) < repeats and (len(times) < 1 or sum(times) < budget):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def paired_median_seconds(fns, repeats=15):
    """Median wall time of each function, called in turn so machine noise hits all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def peak_tensor_bytes(fn):
    """Peak bytes of TensorFlow tensors on the CPU during `fn()`, above those live before.

    TensorFlow's allocator statistics, not RSS: freed buffers stay in the
    process's RSS, so RSS cannot show a second call's peak.
    """
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn()
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def in_fresh_process(code, *args):
    """Runs `code` in a new Python process; returns the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
