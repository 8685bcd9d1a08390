"""Runs of the CLI: run folders, training with checkpoints and resume, the demo."""

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np

from rkd_keras import _report
from rkd_keras.data import load_dataset, pk_batches, preprocess_image
from rkd_keras.distiller import Distiller
from rkd_keras.export import export_student
from rkd_keras.losses import TripletLoss
from rkd_keras.models import embedding_model
from rkd_keras.retrieval import RetrievalRecall, map_at_r, r_precision, recall_at_k

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


def write_json(path, value):
    """Writes JSON atomically: a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


class RunFolder:
    """`runs/<name>/` and its status: running, complete, or incomplete (resumable)."""

    def __init__(self, path, resume=False):
        self.path = Path(path)
        status = self.status()
        if status is None and resume:
            raise FileNotFoundError(f"cannot resume {self.path}: no such run.")
        if status is not None and not resume:
            raise FileExistsError(f"{self.path} exists ({status}); pass --resume to continue it or --name for a new run.")
        self.path.mkdir(parents=True, exist_ok=True)

    def status(self):
        file = self.path / "status.json"
        return json.loads(file.read_text())["status"] if file.exists() else None

    def set_status(self, status, **details):
        write_json(self.path / "status.json", {"status": status, **details})

    @contextlib.contextmanager
    def running(self):
        """Marks the run running; on any exception (Ctrl-C too) incomplete, with the reason."""
        self.set_status("running")
        try:
            yield
        except BaseException as error:
            self.set_status("incomplete", reason=f"{type(error).__name__}: {error}")
            raise

    def config(self, config):
        """The run's config: the saved one when resuming, so a resumed run is the same run."""
        saved = self.path / "config.json"
        if saved.exists():
            return type(config)(**json.loads(saved.read_text()))
        write_json(saved, dataclasses.asdict(config))
        return config


class _BestCheckpoint(keras.callbacks.Callback):
    """Saves the embedding model whenever validation Recall@1 improves."""

    def __init__(self, embedder, path):
        super().__init__()
        self.embedder, self.path, self.best = embedder, Path(path), -np.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_recall_at_1", -np.inf)
        if value > self.best:
            self.best = value
            partial = self.path.with_name(".partial." + self.path.name)
            self.embedder.save(partial)
            os.replace(partial, self.path)
            write_json(self.path.with_suffix(".json"), {"epoch": epoch + 1, "val_recall_at_1": value})


def _optimizer(config):
    steps = [epoch * config.steps_per_epoch for epoch in config.lr_decay_epochs]
    learning_rate = config.learning_rate
    if steps:
        values = [config.learning_rate * config.lr_decay_factor**i for i in range(len(steps) + 1)]
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(steps, values)
    return keras.optimizers.Adam(learning_rate, weight_decay=config.weight_decay or None)


def _input_shape(config):
    return (config.image_size, config.image_size, config.channels)


def _data(config, split):
    options = dict(
        channels=config.channels, data_dir=config.data_dir, manual_dir=config.manual_dir,
        download=config.download, validation_fraction=config.validation_fraction,
    )
    resize_size = config.resize_size or round(config.image_size * 256 / 224)
    if split == "train":
        # Augmented: stored resized, random crops and flips happen per epoch.
        stored_size = resize_size if config.augment else config.image_size
        data = load_dataset(config.dataset, "train", image_size=stored_size, resize_size=resize_size, augment=False, **options)
        return data.take(config.max_train_items) if config.max_train_items else data
    data = load_dataset(config.dataset, split, image_size=config.image_size, resize_size=resize_size, augment=False, **options)
    if config.max_eval_items:
        # Validation is read at every epoch end: decode, filter and resize once,
        # and keep these few items in memory (the demo's full pass took ~1 s).
        data = data.take(config.max_eval_items).cache()
    return data.batch(256)


def _batches(config, model=None, first_epoch=0):
    """P×K training batches; with the teacher's embeddings cached when `model` is a Distiller."""
    augment = None
    if config.augment:
        size = config.image_size

        def augment(image, label):
            return preprocess_image(image, image_size=size, resize_size=image.shape[0], augment=True, channels=config.channels), label

    data = _data(config, "train")
    if isinstance(model, Distiller) and config.cache_teacher and not config.augment:
        # No random augmentation: the frozen teacher's embeddings are the same every epoch.
        data = model.cache_teacher_embeddings(data)
    return pk_batches(
        data, config.classes_per_batch, config.samples_per_class,
        seed=config.seed, num_batches=config.steps_per_epoch, map_fn=augment, first_epoch=first_epoch,
    )


def _resumed_epoch(backup):
    """The epoch BackupAndRestore will resume at (0 for a new run)."""
    metadata = Path(backup) / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0


def _model(config, teacher_path):
    """The model to fit and the embedding model it trains."""
    embedder = embedding_model(
        config.backbone, config.embedding_dim, l2_normalize=config.l2_normalize, input_shape=_input_shape(config),
        weights=config.weights, width=config.width, name="embedding",
    )
    triplet = TripletLoss(margin=config.margin, sampling=config.sampling)
    if teacher_path is None or not (config.distance_weight or config.angle_weight):
        embedder.compile(_optimizer(config), loss=triplet, jit_compile=config.jit_compile)
        return embedder, embedder
    teacher = keras.models.load_model(teacher_path)
    distiller = Distiller(
        teacher, embedder, distance_weight=config.distance_weight, angle_weight=config.angle_weight,
        task_loss_weight=config.triplet_weight,
    )
    distiller.compile(_optimizer(config), loss=triplet if config.triplet_weight else None, jit_compile=config.jit_compile)
    return distiller, embedder


def evaluate(model, config, split="test"):
    """Recall@1/2/4/8, MAP@R and R-precision of an embedding model on a split."""
    embeddings, labels = RetrievalRecall(_data(config, split)).embed(model)
    recalls = recall_at_k(embeddings, labels)
    return {
        **{f"recall_at_{k}": value for k, value in recalls.items()},
        "map_at_r": map_at_r(embeddings, labels),
        "r_precision": r_precision(embeddings, labels),
        "items": int(len(labels)),
        "params": int(model.count_params()),
    }


def evaluate_file(model_path, config, split):
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist.")
    model = keras.models.load_model(model_path)
    return evaluate(getattr(model, "student", model), config, split)


def export_file(model_path, output, overwrite):
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist.")
    export_student(keras.models.load_model(model_path), output, overwrite=overwrite)


def train(config, folder, teacher_path=None, verbose=1):
    """Trains one model in `folder`; returns its test metrics (from the best checkpoint)."""
    if folder.status() == "complete":
        return json.loads((folder.path / "metrics.json").read_text())
    config = folder.config(config)
    with folder.running():
        keras.utils.set_random_seed(config.seed)
        model, embedder = _model(config, teacher_path)
        callbacks = [
            RetrievalRecall(_data(config, "validation")),  # first: the others read its logs
            _BestCheckpoint(embedder, folder.path / "best.keras"),
            keras.callbacks.CSVLogger(str(folder.path / "history.csv"), append=True),
            keras.callbacks.TensorBoard(str(folder.path / "tensorboard")),
            keras.callbacks.BackupAndRestore(str(folder.path / "backup")),
        ]
        batches = _batches(config, model, first_epoch=_resumed_epoch(folder.path / "backup"))
        model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
        best = keras.models.load_model(folder.path / "best.keras")
        metrics = {**evaluate(best, config), **json.loads((folder.path / "best.json").read_text())}
    write_json(folder.path / "metrics.json", metrics)
    _report.plot_report(folder.path / "report.png", {folder.path.name: metrics}, {folder.path.name: _history(folder.path)})
    folder.set_status("complete")
    return metrics


def _history(path):
    """history.csv as {column: [values]} (CSVLogger rows of every session, resumed ones too)."""
    lines = (Path(path) / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line and not line.startswith("epoch")]
    return {name: [float(row[i]) for row in rows] for i, name in enumerate(header) if name != "epoch"}


def demo(root, configs, resume=False, verbose=1):
    """Teacher, triplet-only student and RKD students on Fashion-MNIST, side by side."""
    root = Path(root)
    top = RunFolder(root, resume=resume)
    with top.running():
        results = {}
        teacher_path = root / "teacher" / "best.keras"
        for name, config in configs.items():
            folder = RunFolder(root / name, resume=(root / name).exists())
            results[name] = train(config, folder, None if name == "teacher" else teacher_path, verbose)
    _report.print_table(results)
    write_json(root / "metrics.json", results)
    _report.plot_report(root / "report.png", results, {name: _history(root / name) for name in results})
    # The best student by validation Recall@1: never select on the test classes.
    best = max((name for name in results if name != "teacher"), key=lambda name: results[name]["val_recall_at_1"])
    teacher = keras.models.load_model(teacher_path)
    student = keras.models.load_model(root / best / "best.keras")
    embeddings_teacher, labels = RetrievalRecall(_data(configs["teacher"], "test")).embed(teacher)
    embeddings_student, _ = RetrievalRecall(_data(configs[best], "test")).embed(student)
    names = FASHION_MNIST_CLASSES if configs["teacher"].dataset == "fashion_mnist" else None
    _report.plot_embedding_map(
        root / "embedding_map.png", {"teacher": embeddings_teacher, f"student ({best})": embeddings_student}, labels, names
    )
    export_student(student, root / "student_savedmodel", overwrite=True)
    top.set_status("complete", best_student=best)
    print(f"\nreport: {root / 'report.png'}, map: {root / 'embedding_map.png'}, best student ({best}) "
          f"exported to {root / 'student_savedmodel'}")
    return results


def tune(config, folder, teacher_path, tuner, max_trials, verbose=1):
    """Searches the loss weights on validation Recall@1; saves and tests the best student."""
    from rkd_keras.tuning import RKDHyperModel, search_loss_weights

    config = folder.config(config)
    with folder.running():
        keras.utils.set_random_seed(config.seed)
        student_kwargs = dict(
            backbone=config.backbone, embedding_dim=config.embedding_dim, l2_normalize=config.l2_normalize,
            input_shape=_input_shape(config), weights=config.weights, width=config.width,
        )
        hypermodel = RKDHyperModel(
            keras.models.load_model(teacher_path),
            lambda: embedding_model(**student_kwargs),
            task_loss=TripletLoss(margin=config.margin, sampling=config.sampling) if config.triplet_weight else None,
        )
        best_hp, student, _ = search_loss_weights(
            hypermodel, _batches(config), _data(config, "validation"), tuner=tuner, max_trials=max_trials,
            epochs=config.epochs, directory=str(folder.path), project_name="trials", verbose=verbose,
        )
        student.save(folder.path / "best.keras")
        write_json(folder.path / "best_hyperparameters.json", best_hp.values)
        metrics = {**evaluate(student, config), "hyperparameters": best_hp.values}
    write_json(folder.path / "metrics.json", metrics)
    folder.set_status("complete")
    return metrics
