"""One training epoch from an image folder against the same images in memory: wall time and peak RSS (issue 20,
acceptance 3: goal ≤ 1.2× the time and peak RSS ≤ 1.5 GB, on ≥ 100,000 small images).

    PYTHONPATH=. python benchmarks/folder_epoch.py [--images 100000] [--classes 10] [--repeats 3] [--work DIR]
                                                   [--sources memory folder folder_decoded]

1. Generates `--images` 28×28 grey PNGs, `--classes` subfolders of equal size (each class a fixed random blot,
   each image that blot under its own noise, so PNG decoding has real work), in `--work` (default: a temporary
   folder; a folder that already holds them is reused). The same pixels can be made again in memory, chunk by
   chunk, without reading the files.
2. Trains the demo's teacher network (small_cnn, width 32, 128-d, L2-normalized, triplet loss with
   distance-weighted sampling, Adam 3e-3) for one epoch of P×K batches (the demo's 5 classes × 12 images),
   an epoch being one pass over the images (⌈images / 60⌉ steps), from each source (`--sources`):
   - `folder`: as `train-teacher --dataset folder --dataset-path DIR` reads it (without a validation hold-out):
     `load_dataset("folder", "train", path=DIR, classes=every class, decode=False)`, the images' paths, →
     `pk_batches(..., map_fn=folder_image_loader(...))`, which decodes each sampled image in the batches' pipeline;
   - `folder_decoded`: `load_dataset(...)` decoded → `pk_batches`, which reads every decoded image into memory
     (how a teacher trained from a folder before 2026-12-08, and how a distilled student with a cached teacher
     still does, as the teacher needs every image);
   - `memory`: the same images as one uint8 array → `tf.data.Dataset.from_tensor_slices` → the resizing
     `load_dataset` gives the named datasets (`preprocess_image`) → `pk_batches`.
   Each run is a fresh process (so each peak RSS is its own, `ru_maxrss`), the two sources in turn `--repeats`
   times (so machine noise hits both alike). Timed apart: `load` (the `load_dataset` call or its in-memory
   equivalent; for a folder the scan and the check that decodes every image), `batches` (`pk_batches`, which
   reads the split), and `epoch` (`fit`, the step function's tracing included: the same for both).

Prints the median seconds of each part, the whole (load + batches + epoch: what a user waits for an epoch) and
its ratio folder / memory, and the highest peak RSS of each source, against the goals. The files are read from
the page cache after the first run (they were just written): this measures the pipeline, not the disk.
"""

import argparse
import multiprocessing
import statistics
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import in_fresh_process  # noqa: E402

SIZE = 28
CHUNK = 10_000
CLASSES_PER_BATCH, SAMPLES_PER_CLASS = 5, 12  # the demo's
TIME_GOAL, RSS_GOAL = 1.2, 1.5 * 2**30


def chunk(index: int, images: int, classes: int) -> tuple:
    """The images `[index · CHUNK, …)` of `images` and their labels (class = position modulo `classes`)."""
    blots = np.random.default_rng(0).uniform(0, 255, size=(classes, SIZE // 4, SIZE // 4))
    blots = blots.repeat(4, axis=1).repeat(4, axis=2)  # coarse shapes, as a garment's
    positions = np.arange(index * CHUNK, min((index + 1) * CHUNK, images))
    labels = positions % classes
    noise = np.random.default_rng((1, index)).normal(0, 40, size=(len(positions), SIZE, SIZE))
    return np.clip(blots[labels] + noise, 0, 255).astype(np.uint8), labels, positions


def png(image) -> bytes:
    """A grey uint8 `(height, width)` image as PNG (no filter, zlib), without an imaging library."""
    height, width = image.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in image)

    def part(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", zlib.compress(rows)) + part(b"IEND", b"")


def _write_chunk(job):
    root, index, images, classes = job
    pixels, labels, positions = chunk(index, images, classes)
    for image, label, position in zip(pixels, labels, positions):
        (root / f"class_{label:03d}" / f"{position:07d}.png").write_bytes(png(image))


def write_folder(root: Path, images: int, classes: int) -> None:
    done = root / "complete"
    if done.exists() and done.read_text() == f"{images} {classes}":
        return
    for label in range(classes):
        (root / f"class_{label:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(root, index, images, classes) for index in range(-(-images // CHUNK))]
    with multiprocessing.Pool() as pool:
        pool.map(_write_chunk, jobs)
    done.write_text(f"{images} {classes}")


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[5])
import keras, numpy as np, tensorflow as tf
from folder_epoch import CHUNK, CLASSES_PER_BATCH, SAMPLES_PER_CLASS, SIZE, chunk
from rkd_keras import TripletLoss, embedding_model, load_dataset, pk_batches
from rkd_keras.data import default_resize_size, folder_image_loader, preprocess_image

mode, root, images, classes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sizes = dict(image_size=SIZE, resize_size=default_resize_size(SIZE), augment=False, channels=1)
keras.utils.set_random_seed(0)
model = embedding_model("small_cnn", 128, input_shape=(SIZE, SIZE, 1), width=32, l2_normalize=True, name="teacher")
model.compile(keras.optimizers.Adam(3e-3), loss=TripletLoss(margin=0.2, sampling="distance_weighted"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
map_fn = None
if mode == "folder":
    train = load_dataset("folder", "train", path=root, classes=list(range(classes)), decode=False, **sizes)
    map_fn = folder_image_loader(**sizes)
elif mode == "folder_decoded":
    train = load_dataset("folder", "train", path=root, classes=list(range(classes)), **sizes)
else:
    parts = [chunk(index, images, classes) for index in range(-(-images // CHUNK))]
    pixels, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    del parts
    train = tf.data.Dataset.from_tensor_slices((pixels[..., None], labels)).map(
        lambda image, label: (preprocess_image(image, **sizes), label), num_parallel_calls=tf.data.AUTOTUNE
    )
loaded = time.perf_counter()
steps = -(-images // (CLASSES_PER_BATCH * SAMPLES_PER_CLASS))
batches = pk_batches(train, CLASSES_PER_BATCH, SAMPLES_PER_CLASS, seed=0, num_batches=steps, map_fn=map_fn)
batched = time.perf_counter()
model.fit(batches, epochs=1, verbose=0)
end = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"load": loaded - start, "batches": batched - loaded, "epoch": end - batched, "total": end - start,
                  "peak": peak, "before": before, "steps": steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", help="folder for the images (default: a temporary one)")
    parser.add_argument("--sources", nargs="+", choices=("memory", "folder", "folder_decoded"), default=["memory", "folder"])
    args = parser.parse_args()

    root = Path(args.work or tempfile.mkdtemp(prefix="folder-epoch-")) / "images"
    write_folder(root, args.images, args.classes)
    here = str(Path(__file__).parent)
    runs = {source: [] for source in args.sources}
    for repeat in range(args.repeats):
        for mode in runs:
            runs[mode].append(in_fresh_process(CHILD, mode, root, args.images, args.classes, here))
            row = runs[mode][-1]
            parts = ", ".join(f"{part} {row[part]:.1f} s" for part in ("load", "batches", "epoch", "total"))
            print(f"round {repeat + 1} {mode}: {parts}, peak RSS {row['peak'] / 2**20:,.0f} MB", flush=True)

    def median(mode, part):
        return statistics.median(row[part] for row in runs[mode])

    steps = runs["memory"][0]["steps"]
    print(f"\n{args.images:,} images of {SIZE}×{SIZE}×1 in {args.classes} classes, {steps:,} steps of "
          f"{CLASSES_PER_BATCH}×{SAMPLES_PER_CLASS}, median of {args.repeats} runs each (seconds)\n")
    print("| source | load | batches | epoch | load + batches + epoch | ÷ memory | peak RSS | RSS before the data |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in runs:
        parts = " | ".join(f"{median(mode, part):.1f}" for part in ("load", "batches", "epoch", "total"))
        ratio = f"{median(mode, 'total') / median('memory', 'total'):.2f}×" if "memory" in runs else "–"
        peak, before = max(row["peak"] for row in runs[mode]), max(row["before"] for row in runs[mode])
        print(f"| {mode} | {parts} | {ratio} | {peak / 2**20:,.0f} MB | {before / 2**20:,.0f} MB |")
    print(f"\ngoals: ≤ {TIME_GOAL}× the in-memory time, peak RSS ≤ {RSS_GOAL / 2**30} GB")
    for mode in runs:
        peak = max(row["peak"] for row in runs[mode])
        verdict = f"{mode}: RSS {'met' if peak <= RSS_GOAL else 'NOT met'} ({peak / 2**30:.2f} GB)"
        if mode != "memory" and "memory" in runs:
            ratio = median(mode, "total") / median("memory", "total")
            verdict += f", time {'met' if ratio <= TIME_GOAL else 'NOT met'} ({ratio:.2f}×)"
        print(verdict)


if __name__ == "__main__":
    main()
