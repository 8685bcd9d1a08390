"""The default Distiller's training step (RKD-DA) against the same step of a released rkd_keras.

Run: .venv/bin/python benchmarks/distiller_release.py [--release 73e4d63] [--processes 3] [--steps 20]

The release's `rkd_keras` package is taken from git (`git archive`, default:
73e4d63, version 0.1.0) into a temporary folder; each version then runs in
fresh TensorFlow processes, in turn (old, new, old, new, ...), so machine
noise hits both alike. Each process builds the same two functional CNNs by
hand (not with either version's `embedding_model`, whose layers differ) —
a 512-d teacher of width 96 and a 64-d student of width 32 on 28×28×1
images, batch 128 — and times `Distiller(teacher, student)` (RKD-D + 2·RKD-A
on the outputs, Adam) under `fit`, with `jit_compile` off and on: the
median step, the first step of each fit dropped. The table gives each
version's median over its processes and the ratio current / release.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import in_fresh_process  # noqa: E402

CHILD = r"""
import json, statistics, sys
sys.path.insert(0, sys.argv[1])  # the folder that holds the rkd_keras to time
sys.path.insert(1, sys.argv[4])  # the benchmarks
import keras, numpy as np
import rkd_keras
from rkd_keras import Distiller
from _measure import StepTimer

steps, rounds = int(sys.argv[2]), int(sys.argv[3])
assert rkd_keras.__file__.startswith(sys.argv[1]), rkd_keras.__file__


def cnn(width, dim, name):
    x = inputs = keras.Input((28, 28, 1))
    for filters in (width, 2 * width, 4 * width):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(dim)(x), name=name)


keras.utils.set_random_seed(0)
teacher, student = cnn(96, 512, "teacher"), cnn(32, 64, "student")
teacher(np.zeros((1, 28, 28, 1), "float32"))
x = np.random.default_rng(0).uniform(0, 255, size=(128 * steps, 28, 28, 1)).astype("float32")
row = {}
for jit in (False, True):
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(1e-4), jit_compile=jit)
    timer = StepTimer()
    for _ in range(rounds):
        distiller.fit(x, batch_size=128, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    row[str(jit)] = statistics.median(timer.times)
print(json.dumps(row))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="73e4d63", help="the git revision of the release (default: 0.1.0)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per version")
    parser.add_argument("--steps", type=int, default=20, help="steps per fit")
    parser.add_argument("--rounds", type=int, default=2, help="fits per process and jit mode")
    args = parser.parse_args()
    repository = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as release:
        archive = subprocess.run(["git", "-C", str(repository), "archive", args.release, "rkd_keras"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", release], input=archive, check=True)
        roots = {args.release: release, "current": str(repository)}
        found = {version: [] for version in roots}
        for turn in range(args.processes):
            for version, root in roots.items():
                print(f"process {turn + 1}/{args.processes}: {version}", file=sys.stderr, flush=True)
                found[version].append(
                    in_fresh_process(CHILD, root, args.steps, args.rounds, Path(__file__).parent, backend="tensorflow")
                )
    print(f"RKD-DA step, median ms over {args.processes} processes (each the median of "
          f"{args.rounds * (args.steps - 1)} steps)")
    print(f"{'jit':>5} | {args.release + ' ms':>12} {'current ms':>11} | {'ratio':>6} | per process: release / current")
    for jit in ("False", "True"):
        old = [row[jit] for row in found[args.release]]
        new = [row[jit] for row in found["current"]]
        each = ", ".join(f"{1e3 * a:.0f}/{1e3 * b:.0f}" for a, b in zip(old, new))
        print(f"{jit:>5} | {1e3 * statistics.median(old):>12.1f} {1e3 * statistics.median(new):>11.1f} | "
              f"{statistics.median(new) / statistics.median(old):>6.3f} | {each}")
    print(json.dumps(found), file=sys.stderr)


if __name__ == "__main__":
    main()
