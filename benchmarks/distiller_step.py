"""Distiller overhead and the teacher-embedding cache, against hand-written baselines.

Run: .venv/bin/python benchmarks/distiller_step.py [--pairs small,resnet] [--steps 10]

1. One `Distiller` train step (its own `train_function`, as `fit` runs it)
   vs a hand-written `tf.function` doing the teacher's forward pass and a
   plain student step (loss: mean squared embedding) with the same optimizer,
   on the same batch; with `jit_compile` off and on. The ratio is the
   overhead of the Distiller, the losses included. Two Distillers: RKD-DA
   alone (`Distiller(teacher, student)`, the setting of earlier
   measurements), and five terms read from two layers of each model
   (RKD-D and RKD-A on the embeddings; similarity preserving, PKT and a
   FitNet hint on the pooled features), which still runs each model once.
   The three are called in turn, 20 times each, so machine noise hits all alike.
2. Seconds per epoch of `fit` on P×K batches, teacher computed every step vs
   `cache_teacher_embeddings` (the cache is built once, before `fit`, and its
   time is shown separately).
Medians after warm-up (epochs: of epochs 2–5); all in one process per pair.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import in_fresh_process  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[3])
import keras, numpy as np, tensorflow as tf
from _measure import paired_median_seconds
from rkd_keras import Distiller, Term, embedding_model, pk_batches

pair, steps = sys.argv[1], int(sys.argv[2])
shape, batch = {"small": ((28, 28, 1), 128), "resnet": ((32, 32, 3), 64)}[pair]
teacher_backbone = {"small": "small_cnn", "resnet": "resnet18"}[pair]
teacher_width = {"small": 96, "resnet": 64}[pair]
keras.utils.set_random_seed(0)
teacher = embedding_model(teacher_backbone, 512, input_shape=shape, width=teacher_width, name="teacher")
student = embedding_model("small_cnn", 64, input_shape=shape, width=32, name="student")
rng = np.random.default_rng(0)
x = tf.constant(rng.uniform(0, 255, size=(batch, *shape)), tf.float32)
row = {"teacher_params": teacher.count_params(), "student_params": student.count_params()}


def pooled(model):
    (layer,) = [each for each in model.layers if isinstance(each, keras.layers.GlobalAveragePooling2D)]
    return layer.name


pools = {"teacher_layer": pooled(teacher), "student_layer": pooled(student)}
five_terms = [
    Term("rkd_distance"), Term("rkd_angle", 2.0),
    Term("similarity_preserving", **pools), Term("pkt", **pools), Term("fitnet", 0.1, **pools),
]

for jit in (False, True):
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(student.trainable_variables)

    @tf.function(jit_compile=jit)
    def baseline(x):
        teacher_embeddings = teacher(x, training=False)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(student(x, training=True))) + 0.0 * tf.reduce_mean(teacher_embeddings)
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        return loss

    train_steps = []
    for terms in (None, five_terms):
        distiller = Distiller(teacher, student, terms=terms)
        distiller.compile(keras.optimizers.Adam(1e-4), jit_compile=jit)
        distiller.make_train_function()
        data = iter(tf.data.Dataset.from_tensors(x).repeat())
        train_steps.append(lambda train=distiller.train_function, data=data: float(train(data)["loss"]))
    rkd_da, five, base = paired_median_seconds([*train_steps, lambda: float(baseline(x))], repeats=20)
    row[f"jit={jit}"] = {"distiller": rkd_da, "five_terms": five, "baseline": base}

teacher_forward = tf.function(lambda x: teacher(x, training=False))
row["teacher_forward"], = paired_median_seconds([lambda: teacher_forward(x).numpy()], repeats=10)

labels = np.repeat(np.arange(64), 8)
images = rng.uniform(0, 255, size=(len(labels), *shape)).astype(np.float32)
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
    distiller.fit(pk_batches(data, batch // 8, 8, seed=0, num_batches=steps), epochs=5, verbose=0, callbacks=[timer])
    epochs[str(cached)] = {"epoch": statistics.median(times[1:]), "cache": cache_seconds}
row["epochs"] = epochs
print(json.dumps(row))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="small,resnet")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch in the cache comparison")
    args = parser.parse_args()
    here = Path(__file__).parent
    print(f"{'teacher → student':<26} {'jit':>5} | {'RKD-DA ms':>9} {'5 terms ms':>10} {'baseline ms':>11} | "
          f"{'ratio':>6} {'5 terms':>7} | {'teacher forward ms':>18}")
    rows = {pair: in_fresh_process(CHILD, pair, args.steps, here) for pair in args.pairs.split(",")}
    for pair, row in rows.items():
        label = f"{pair} ({row['teacher_params'] / 1e6:.2f}M → {row['student_params'] / 1e6:.2f}M)"
        for jit in (False, True):
            r = row[f"jit={jit}"]
            print(f"{label:<26} {str(jit):>5} | {1e3 * r['distiller']:>9.1f} {1e3 * r['five_terms']:>10.1f} "
                  f"{1e3 * r['baseline']:>11.1f} | {r['distiller'] / r['baseline']:>6.3f} "
                  f"{r['five_terms'] / r['baseline']:>7.3f} | {1e3 * row['teacher_forward']:>18.1f}")
    print(f"\n{'teacher → student':<26} | {'epoch s, teacher':>16} {'epoch s, cached':>15} | {'speed-up':>8} "
          f"| {'cache build s':>13}")
    for pair, row in rows.items():
        label = f"{pair} ({row['teacher_params'] / row['student_params']:.1f}× params)"
        plain, cached = row["epochs"]["False"], row["epochs"]["True"]
        print(f"{label:<26} | {plain['epoch']:>16.2f} {cached['epoch']:>15.2f} | "
              f"{plain['epoch'] / cached['epoch']:>7.2f}× | {cached['cache']:>13.2f}")


if __name__ == "__main__":
    main()
