"""RKD-A forward + backward: rkd_keras vs the official N×N×D form on each Keras backend, time and peak memory.

Run: .venv/bin/python benchmarks/angle_loss.py [--backends tensorflow,jax,torch] [--sizes 64,128,256,512,1024]
                                                [--dims 64,512,2048] [--direct-limit-gb 6] [--repeats 5]
One fresh process per backend (`KERAS_BACKEND`) times both forms on every
(N, D), compiled as that backend trains (`tf.function`; `jax.jit`; eager
PyTorch), on its default device (a GPU where there is one): the median of up
to `--repeats` runs after a warm-up, then one more call's peak memory (see
`_measure.peak_bytes`: TensorFlow's allocator, XLA's buffer assignment on
JAX, the CUDA allocator on PyTorch, not measured for PyTorch on CPU). The
direct form is the official code's, written with `keras.ops`, so each
backend runs its own; it is not run where its N×N×D differences and N³
angles alone would pass --direct-limit-gb.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import BACKENDS, in_fresh_process  # noqa: E402

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import keras, numpy as np
from _measure import as_backend_arrays, gradient_step, median_seconds, peak_bytes
from rkd_keras.losses import rkd_angle

cells, limit_gb, repeats = json.loads(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])


def direct_angle(teacher, student):
    # lenscloth/RKD metric/loss.py RkdAngle: N×N×D differences, F.normalize, bmm, smooth-L1.
    def angles(x):
        difference = x[None, :, :] - x[:, None, :]
        squared = keras.ops.sum(difference * difference, axis=2, keepdims=True)
        unit = difference * keras.ops.rsqrt(keras.ops.maximum(squared, 1e-24))
        return keras.ops.reshape(keras.ops.matmul(unit, keras.ops.transpose(unit, (0, 2, 1))), (-1,))

    return keras.losses.huber(keras.ops.stop_gradient(angles(teacher)), angles(student))


rows = []
for n, dim in cells:
    rng = np.random.default_rng(0)
    teacher, student = as_backend_arrays(*rng.normal(size=(2, n, dim)).astype("float32"))
    # The direct form's N×N×D differences (teacher and student) and N³ angles (teacher, student, difference).
    direct_gb = 4 * (2 * n * n * dim + 3 * n**3) / 2**30
    row = {"n": n, "dim": dim, "direct_gb": direct_gb}
    for name, loss in [("ours", rkd_angle)] + [("direct", direct_angle)] * (direct_gb <= limit_gb):
        step = gradient_step(loss)
        seconds, runs = median_seconds(lambda: step(teacher, student), repeats=repeats)
        peak = peak_bytes(loss, step, teacher, student)
        row[name] = {"seconds": seconds, "runs": runs, "peak_mb": None if peak is None else peak / 2**20,
                     "loss": float(step(teacher, student)[0])}
    rows.append(row)
print(json.dumps(rows))
"""


def _cell(backend_row):
    """`ours ms | direct ms | speed-up | ours MB | direct MB` of one backend."""
    ours, direct = backend_row["ours"], backend_row.get("direct")

    def megabytes(part):
        return "—" if part is None or part["peak_mb"] is None else f"{part['peak_mb']:.0f}"

    if direct is None:
        return f"{1e3 * ours['seconds']:>8.1f} {'not run':>9} {'':>6} {megabytes(ours):>6} {'':>7}"
    return (f"{1e3 * ours['seconds']:>8.1f} {1e3 * direct['seconds']:>9.1f} "
            f"{direct['seconds'] / ours['seconds']:>5.1f}× {megabytes(ours):>6} {megabytes(direct):>7}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--dims", default="64,512,2048")
    parser.add_argument("--direct-limit-gb", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    here = Path(__file__).parent
    backends = args.backends.split(",")
    cells = [(n, dim) for dim in map(int, args.dims.split(",")) for n in map(int, args.sizes.split(","))]
    results = {b: in_fresh_process(CHILD, here, json.dumps(cells), args.direct_limit_gb, args.repeats, backend=b)
               for b in backends}
    columns = f"{'ours ms':>8} {'direct ms':>9} {'×':>6} {'ours MB':>6} {'dir. MB':>7}"
    print(f"{'':>11} | " + " | ".join(f"{b:^{len(columns)}}" for b in backends) + " | ours vs direct")
    print(f"{'N':>5} {'D':>5} | " + " | ".join(columns for _ in backends) + " | max loss rel diff")
    for i, (n, dim) in enumerate(cells):
        rows = [results[b][i] for b in backends]
        diffs = [abs(r["ours"]["loss"] - r["direct"]["loss"]) / abs(r["direct"]["loss"]) for r in rows if "direct" in r]
        spread = f"{max(diffs):.1e}" if diffs else f"direct: > {rows[0]['direct_gb']:.1f} GB"
        print(f"{n:>5} {dim:>5} | " + " | ".join(_cell(r) for r in rows) + f" | {spread}", flush=True)


if __name__ == "__main__":
    main()
