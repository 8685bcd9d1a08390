"""Is an image folder a first-class dataset? The demo's teacher and RKD-DA student, on Fashion-MNIST and on the
same images written as a folder of PNGs (issue 20, acceptance 2).

The folder holds the 70,000 images of Fashion-MNIST's two files, one subfolder per class named `0` … `9`, so its
sorted classes are Fashion-MNIST's labels and its default metric split is the demo's (0–4 train, 5–9 test). The
images are the same pixels; what differs is their order (a folder's images are listed in one fixed shuffled
order, the named dataset's in file order), so the validation images, the `max_train_items` and `max_eval_items`
subsets and the P×K batches differ: the two columns differ by data-order noise, which the other seeds measure.

    PYTHONPATH=. python benchmarks/folder_vs_named.py [--seeds 0 1] [--quick] [--sources folder] [--work DIR]

Prints one table: test Recall@K of each model on each source, per seed, and of the demo's controls, which train
nothing (`training.controls`: the raw pixels and the untrained student of that seed), on the same test images.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def write_folder(root: Path) -> None:
    import tensorflow as tf

    from rkd_keras.data import _fashion_mnist

    parts = _fashion_mnist(None)
    images = np.concatenate([parts["train"][0], parts["test"][0]])
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        (root / str(label) / f"{index:05d}.png").write_bytes(tf.io.encode_png(image[..., None]).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="the demo's quick settings (a check, not a measurement)")
    parser.add_argument("--sources", nargs="+", choices=("fashion_mnist", "folder"), default=["fashion_mnist", "folder"])
    parser.add_argument("--work", help="folder for the images and runs (default: a temporary one)")
    args = parser.parse_args()

    from rkd_keras import presets
    from rkd_keras.cli import main as rkd_keras
    from rkd_keras.cli import training
    from rkd_keras.cli.config import resolve_config

    work = Path(args.work or tempfile.mkdtemp(prefix="folder-vs-named-"))
    images = work / "images"
    if not images.exists():
        write_folder(images)
    quick = presets.DEMO["quick"] if args.quick else {}
    settings = [f"--{key.replace('_', '-')}={value}" for key, value in quick.items()]
    sources = {"fashion_mnist": [], "folder": ["--dataset", "folder", "--dataset-path", str(images)]}
    source_settings = {"fashion_mnist": {}, "folder": {"dataset": "folder", "dataset_path": str(images)}}
    rows = []
    for seed in args.seeds:
        for source in args.sources:
            flags = sources[source]
            common = [*flags, *settings, "--seed", str(seed), "--runs-dir", str(work / "runs"), "--quiet"]
            teacher = f"{source}-seed{seed}-teacher"
            student = f"{source}-seed{seed}-rkd_da"
            if not (work / "runs" / teacher / "metrics.json").exists():
                assert rkd_keras(["train-teacher", *common, "--name", teacher]) == 0
            if not (work / "runs" / student / "metrics.json").exists():
                best = str(work / "runs" / teacher / "best.keras")
                assert rkd_keras(["distill", "--teacher", best, *common, "--name", student]) == 0
            for model, name in (("teacher", teacher), ("rkd_da", student)):
                metrics = json.loads((work / "runs" / name / "metrics.json").read_text())
                rows.append((seed, model, source, metrics))
            controls = work / "runs" / f"{source}-seed{seed}-controls.json"
            if not controls.exists():
                config = resolve_config("student", overrides={**quick, **source_settings[source], "seed": seed})
                controls.write_text(json.dumps(training.controls(config)))
            for model, metrics in json.loads(controls.read_text()).items():
                rows.append((seed, model, source, metrics))
    print(f"\nruns in {work / 'runs'}\n")
    print("| seed | model | data | R@1 | R@2 | R@4 | R@8 | MAP@R | test images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed, model, source, metrics in rows:
        recalls = " | ".join(f"{100 * metrics[f'recall_at_{k}']:.2f}" for k in (1, 2, 4, 8))
        print(f"| {seed} | {model} | {source} | {recalls} | {100 * metrics['map_at_r']:.2f} | {metrics['items']:,} |")


if __name__ == "__main__":
    main()
