"""Is glyphs a benchmark where learning matters? Generation time, and test R@1 of the controls against a trained
teacher on its unseen classes (issue 21, acceptance 2).

Rows: raw pixels (the flattened preprocessed test images, Euclidean), the untrained student (the demo's student
architecture, seeded, no training), the untrained teacher architecture, and the demo's teacher trained with the
demo's budget (6 epochs of 80 P×K batches of 5 × 12) on glyphs classes 0–199; all tested on classes 200–399.

    PYTHONPATH=. python benchmarks/glyphs.py [--seeds 0 1] [--no-teacher] [--work DIR]

Prints the generation time and one table: test R@1 / MAP@R per seed.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-teacher", action="store_true", help="the controls only (seconds, not minutes)")
    parser.add_argument("--work", help="folder for the teacher runs (default: a temporary one)")
    args = parser.parse_args()

    from rkd_keras import glyphs

    start = time.perf_counter()
    images, _ = glyphs._generate(glyphs.NUM_CLASSES, glyphs.IMAGES_PER_CLASS, glyphs.IMAGE_SIZE, 0)
    print(f"generated {len(images):,} glyphs of {glyphs.IMAGE_SIZE}×{glyphs.IMAGE_SIZE} in {time.perf_counter() - start:.1f} s")

    import keras

    from rkd_keras.cli import training
    from rkd_keras.cli.config import resolve_config
    from rkd_keras.cli.runs import RunFolder
    from rkd_keras.retrieval import embed, map_at_r, recall_at_k

    work = Path(args.work or tempfile.mkdtemp(prefix="glyphs-"))
    rows = []
    for seed in args.seeds:
        overrides = {"dataset": "glyphs", "image_size": 32, "seed": seed}
        teacher_config = resolve_config("teacher", overrides=overrides)
        student_config = resolve_config("student", overrides=overrides)
        test = training.data(teacher_config, "test")
        pixels, labels = (np.concatenate(parts) for parts in zip(*test.as_numpy_iterator()))
        scores = {"raw pixels": (pixels.reshape(len(pixels), -1), labels)}
        for name, config in (("untrained student", student_config), ("untrained teacher", teacher_config)):
            keras.utils.set_random_seed(seed)
            scores[name] = embed(training._network(config), test)
        if not args.no_teacher:
            folder = RunFolder(work / f"teacher-seed{seed}")
            config = folder.prepare(teacher_config, resume=folder.path.exists())
            start = time.perf_counter()
            training.train(config, folder, verbose=0, plot=False)
            print(f"seed {seed}: teacher trained in {time.perf_counter() - start:.0f} s")
            best = keras.models.load_model(folder.path / "best.keras")
            scores["trained teacher (demo budget)"] = embed(best, test)
        for name, (embeddings, labels) in scores.items():
            rows.append((seed, name, recall_at_k(embeddings, labels, ks=(1,))[1], map_at_r(embeddings, labels), len(labels)))
    print("\n| seed | embedding | R@1 | MAP@R | test images |")
    print("|---|---|---:|---:|---:|")
    for seed, name, recall, mapr, items in rows:
        print(f"| {seed} | {name} | {100 * recall:.2f} | {100 * mapr:.2f} | {items:,} |")


if __name__ == "__main__":
    main()
