"""Shared by the benchmark scripts: medians after warm-up, peak RSS, fresh processes."""

import json
import statistics
import subprocess
import sys
import threading
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


def _rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.base


def in_fresh_process(code, *args):
    """Runs `code` in a new Python process; returns the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
