"""RKD-A forward + backward: rkd_keras vs the official N×N×D form, time and peak memory.

Run: .venv/bin/python benchmarks/angle_loss.py [--sizes 64,128,256,512,1024] [--dims 64,512,2048]
                                                [--direct-limit-gb 6]
Each (N, D) runs in a fresh process that times both forms after a warm-up
(median of up to 5 runs), then measures one more call's peak tensor memory
(TensorFlow's CPU allocator statistics, above the tensors live before it).
The direct form is not run where its N×N×D differences and N³ angles alone
would pass --direct-limit-gb.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import in_fresh_process  # noqa: E402

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[4])
import keras, numpy as np, tensorflow as tf
from _measure import median_seconds, peak_tensor_bytes
from rkd_keras import rkd_angle

n, dim, run_direct = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"


def direct_angle(teacher, student):
    # lenscloth/RKD metric/loss.py RkdAngle: N×N×D differences, F.normalize, bmm.
    def angles(x):
        unit = tf.math.l2_normalize(x[None, :, :] - x[:, None, :], axis=2, epsilon=1e-24)
        return tf.reshape(tf.matmul(unit, unit, transpose_b=True), [-1])
    return tf.reduce_mean(keras.losses.huber(tf.stop_gradient(angles(teacher)), angles(student)))


def step(loss):
    @tf.function
    def run(teacher, student):
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = loss(teacher, student)
        return value, tape.gradient(value, student)
    return run


rng = np.random.default_rng(0)
teacher = tf.constant(rng.normal(size=(n, dim)), tf.float32)
student = tf.constant(rng.normal(size=(n, dim)), tf.float32)
row = {}
for name, loss in [("ours", rkd_angle)] + ([("direct", direct_angle)] * run_direct):
    run = step(loss)
    seconds, repeats = median_seconds(lambda: run(teacher, student)[1].numpy())
    peak = peak_tensor_bytes(lambda: run(teacher, student)[1].numpy())
    row[name] = {"seconds": seconds, "repeats": repeats, "peak_mb": peak / 2**20,
                 "loss": float(run(teacher, student)[0])}
print(json.dumps(row))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--dims", default="64,512,2048")
    parser.add_argument("--direct-limit-gb", type=float, default=6.0)
    args = parser.parse_args()
    here = Path(__file__).parent
    print(f"{'N':>5} {'D':>5} | {'ours ms':>9} {'ours MB':>8} | {'direct ms':>10} {'direct MB':>10} | "
          f"{'speed-up':>8} {'memory ratio':>12} | {'loss rel diff':>13}")
    for dim in map(int, args.dims.split(",")):
        for n in map(int, args.sizes.split(",")):
            # Its N×N×D differences (teacher and student) and N³ angles (teacher,
            # student, their difference), in float32.
            direct_gb = 4 * (2 * n * n * dim + 3 * n**3) / 2**30
            run_direct = direct_gb <= args.direct_limit_gb
            row = in_fresh_process(CHILD, n, dim, int(run_direct), here)
            ours = row["ours"]
            line = f"{n:>5} {dim:>5} | {1e3 * ours['seconds']:>9.1f} {ours['peak_mb']:>8.0f} | "
            if run_direct:
                direct = row["direct"]
                diff = abs(ours["loss"] - direct["loss"]) / abs(direct["loss"])
                line += (f"{1e3 * direct['seconds']:>10.1f} {direct['peak_mb']:>10.0f} | "
                         f"{direct['seconds'] / ours['seconds']:>7.1f}× "
                         f"{direct['peak_mb'] / max(ours['peak_mb'], 1):>11.1f}× | {diff:>13.1e}")
            else:
                line += f"{'not run: needs > %.1f GB' % direct_gb:>32}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
