"""Distiller overhead and the teacher-embedding cache on each Keras backend, against a plain Keras step.

Run: .venv/bin/python benchmarks/distiller_step.py [--backends tensorflow,jax,torch] [--pairs small,resnet]
                                                    [--steps 20] [--rounds 4] [--no-cache]

1. One training step of `fit`, three models side by side on the same batch:
   a `Distiller` with RKD-DA alone (`Distiller(teacher, student)`), one with
   five terms read from two layers of each model (RKD-D and RKD-A on the
   embeddings; similarity preserving, PKT and a FitNet hint on the pooled
   features; each model still runs once), and the baseline: a plain
   `keras.Model` whose loss runs the teacher's forward pass and a mean
   squared embedding of the student (Keras's own train step on every
   backend). The ratio is the Distiller's overhead, the losses included.
   Steps are timed by a callback that waits for each step's loss; the three
   are fitted in turn `--rounds` times (`--steps` steps each, the first of
   each fit dropped), so machine noise hits all alike. TensorFlow runs with
   `jit_compile` off and on, JAX compiled (its only fast mode), PyTorch eager.
2. Seconds per epoch of `fit` on P×K batches, teacher computed every step vs
   `cache_teacher_embeddings` (built once, before `fit`, and timed apart):
   median of epochs 2–5.
One fresh process per backend and pair (`KERAS_BACKEND`).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import BACKENDS, in_fresh_process  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[4])
import keras, numpy as np
from rkd_keras import Distiller, Term, embedding_model
from _measure import StepTimer

pair, steps, rounds, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5] == "1"
shape, batch = {"small": ((28, 28, 1), 128), "resnet": ((32, 32, 3), 64)}[pair]
teacher_backbone = {"small": "small_cnn", "resnet": "resnet18"}[pair]
teacher_width = {"small": 96, "resnet": 64}[pair]
keras.utils.set_random_seed(0)
teacher = embedding_model(teacher_backbone, 512, input_shape=shape, width=teacher_width, name="teacher")
student = embedding_model("small_cnn", 64, input_shape=shape, width=32, name="student")
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, size=(batch * steps, *shape)).astype("float32")
backend = keras.backend.backend()
row = {"teacher_params": teacher.count_params(), "student_params": student.count_params()}


class Baseline(keras.Model):
    # The teacher's forward pass and a plain student loss, in Keras's own train step.
    def __init__(self, teacher, student):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.teacher.trainable = False

    def call(self, x, training=None):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        teacher_embeddings = keras.ops.stop_gradient(self.teacher(x, training=False))
        return keras.ops.mean(keras.ops.square(y_pred)) + 0.0 * keras.ops.mean(teacher_embeddings)


def pooled(model):
    (layer,) = [each for each in model.layers if isinstance(each, keras.layers.GlobalAveragePooling2D)]
    return layer.name


pools = {"teacher_layer": pooled(teacher), "student_layer": pooled(student)}
five_terms = [
    Term("rkd_distance"), Term("rkd_angle", 2.0),
    Term("similarity_preserving", **pools), Term("pkt", **pools), Term("fitnet", 0.1, **pools),
]
modes = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[backend]
for jit in modes:
    models = {"distiller": Distiller(teacher, student), "five_terms": Distiller(teacher, student, terms=five_terms),
              "baseline": Baseline(teacher, student)}
    timers = {name: StepTimer() for name in models}
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-4), jit_compile=jit)
    for _ in range(rounds):
        for name, model in models.items():
            model.fit(x, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timers[name]])
    row[f"jit={jit}"] = {name: statistics.median(timer.times) for name, timer in timers.items()}

if cache:
    labels = np.repeat(np.arange(64), 8)
    images = rng.uniform(0, 255, size=(len(labels), *shape)).astype(np.float32)
    import tensorflow as tf  # tf.data: not needed above, so a machine without TensorFlow can run --no-cache

    from rkd_keras import pk_batches

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    epochs = {}
    for cached in (False, True):
        keras.utils.set_random_seed(0)
        distiller = Distiller(teacher, embedding_model("small_cnn", 64, input_shape=shape, width=32))
        distiller.compile(keras.optimizers.Adam(1e-4))
        start = time.perf_counter()
        data = distiller.cache_teacher_embeddings(dataset) if cached else dataset
        cache_seconds = time.perf_counter() - start
        times = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
            on_epoch_end=lambda epoch, logs: times.append(time.perf_counter() - times.pop()),
        )
        distiller.fit(pk_batches(data, batch // 8, 8, seed=0, num_batches=steps), epochs=5, verbose=0,
                      callbacks=[timer])
        epochs[str(cached)] = {"epoch": statistics.median(times[1:]), "cache": cache_seconds}
    row["epochs"] = epochs
print(json.dumps(row))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--pairs", default="small,resnet")
    parser.add_argument("--steps", type=int, default=20, help="steps per fit, and per epoch in the cache comparison")
    parser.add_argument("--rounds", type=int, default=4, help="fits of each model, in turn")
    parser.add_argument("--no-cache", action="store_true", help="skip the teacher-cache comparison")
    args = parser.parse_args()
    here = Path(__file__).parent
    rows = {(pair, backend): in_fresh_process(CHILD, pair, args.steps, args.rounds, here, int(not args.no_cache),
                                              backend=backend)
            for pair in args.pairs.split(",") for backend in args.backends.split(",")}
    print(f"{'teacher → student':<26} {'backend':<10} {'jit':>5} | {'RKD-DA ms':>9} {'5 terms ms':>10} "
          f"{'baseline ms':>11} | {'ratio':>6} {'5 terms':>7}")
    for (pair, backend), row in rows.items():
        label = f"{pair} ({row['teacher_params'] / 1e6:.2f}M → {row['student_params'] / 1e6:.2f}M)"
        for key, r in ((k, v) for k, v in row.items() if k.startswith("jit=")):
            print(f"{label:<26} {backend:<10} {key[4:]:>5} | {1e3 * r['distiller']:>9.1f} "
                  f"{1e3 * r['five_terms']:>10.1f} {1e3 * r['baseline']:>11.1f} | "
                  f"{r['distiller'] / r['baseline']:>6.3f} {r['five_terms'] / r['baseline']:>7.3f}")
    if args.no_cache:
        return
    print(f"\n{'teacher → student':<26} {'backend':<10} | {'epoch s, teacher':>16} {'epoch s, cached':>15} | "
          f"{'speed-up':>8} | {'cache build s':>13}")
    for (pair, backend), row in rows.items():
        label = f"{pair} ({row['teacher_params'] / row['student_params']:.1f}× params)"
        plain, cached = row["epochs"]["False"], row["epochs"]["True"]
        print(f"{label:<26} {backend:<10} | {plain['epoch']:>16.2f} {cached['epoch']:>15.2f} | "
              f"{plain['epoch'] / cached['epoch']:>7.2f}× | {cached['cache']:>13.2f}")


if __name__ == "__main__":
    main()
