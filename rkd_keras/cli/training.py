"""One run of the command line: its data, models and optimizer, training with checkpoints, and evaluation."""

import shutil

import keras

from rkd_keras.cli import report
from rkd_keras.cli.inputs import check_keras_file
from rkd_keras.cli.runs import BestCheckpoint, RunFolder, read_history, read_json, resumed_epoch, write_json
from rkd_keras.data import load_dataset, pk_batches, preprocess_image
from rkd_keras.distiller import Distiller
from rkd_keras.losses import TripletLoss
from rkd_keras.models import embedding_model
from rkd_keras.retrieval import RetrievalRecall, embed, map_at_r, r_precision, recall_at_k


def load_model_file(path, what: str) -> keras.Model:
    """Loads a `.keras` file checked by `check_keras_file`, naming the file if Keras cannot read it."""
    path = check_keras_file(path, what)
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises ValueError, TypeError, KeyError... for a file it cannot read
        raise ValueError(f"{what} file {path} could not be loaded by Keras: {error}") from error


def input_shape(config) -> tuple:
    return (config.image_size, config.image_size, config.channels)


def check_fits_data(model, config, what: str) -> None:
    """Refuses a model whose input shape does not take the data's images, naming both shapes."""
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    given = input_shape(config)
    if expected is None or len(expected) != 3:
        raise ValueError(f"the {what} takes inputs of shape {expected}, not images {given} (height, width, channels).")
    if any(want is not None and want != have for want, have in zip(expected, given)):
        raise ValueError(
            f"the {what} takes images of shape {expected} but the data gives {given} "
            f"(--image-size {config.image_size}, --channels {config.channels}); give the settings it was trained with."
        )


def _optimizer(config):
    steps = [epoch * config.steps_per_epoch for epoch in config.lr_decay_epochs]
    learning_rate = config.learning_rate
    if steps:
        values = [config.learning_rate * config.lr_decay_factor**i for i in range(len(steps) + 1)]
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(steps, values)
    return keras.optimizers.Adam(learning_rate, weight_decay=config.weight_decay or None)


def data(config, split):
    """The split's images: unbatched stored training images, or batched evaluation images."""
    options = dict(
        channels=config.channels, data_dir=config.data_dir, manual_dir=config.manual_dir,
        download=config.download, validation_fraction=config.validation_fraction,
    )
    resize_size = config.resize_size or round(config.image_size * 256 / 224)
    if split == "train":
        # Augmented: stored resized, random crops and flips happen per epoch.
        stored_size = resize_size if config.augment else config.image_size
        images = load_dataset(config.dataset, "train", image_size=stored_size, resize_size=resize_size, augment=False, **options)
        return images.take(config.max_train_items) if config.max_train_items else images
    images = load_dataset(config.dataset, split, image_size=config.image_size, resize_size=resize_size, augment=False, **options)
    if config.max_eval_items:
        # Validation is read at every epoch end: decode, filter and resize once,
        # and keep these few items in memory (the demo's full pass took ~1 s).
        images = images.take(config.max_eval_items).cache()
    return images.batch(256)


def _batches(config, model=None, first_epoch=0):
    """P×K training batches; with the teacher's embeddings cached when `model` is a Distiller."""
    augment = None
    if config.augment:
        size = config.image_size

        def augment(image, label):
            return preprocess_image(image, image_size=size, resize_size=image.shape[0], augment=True, channels=config.channels), label

    train = data(config, "train")
    if isinstance(model, Distiller) and config.cache_teacher and not config.augment:
        # No random augmentation: the frozen teacher's embeddings are the same every epoch.
        train = model.cache_teacher_embeddings(train)
    return pk_batches(
        train, config.classes_per_batch, config.samples_per_class,
        seed=config.seed, num_batches=config.steps_per_epoch, map_fn=augment, first_epoch=first_epoch,
    )


def _embedder(config):
    return embedding_model(
        config.backbone, config.embedding_dim, l2_normalize=config.l2_normalize, input_shape=input_shape(config),
        weights=config.weights, width=config.width, name="embedding", download=config.download,
    )


def _model(config, teacher):
    """The model to fit and the embedding model it trains."""
    embedder = _embedder(config)
    triplet = TripletLoss(margin=config.margin, sampling=config.sampling)
    if teacher is None or not (config.distance_weight or config.angle_weight):
        embedder.compile(_optimizer(config), loss=triplet, loss_weights=config.triplet_weight, jit_compile=config.jit_compile)
        return embedder, embedder
    distiller = Distiller(
        teacher, embedder, distance_weight=config.distance_weight, angle_weight=config.angle_weight,
        task_loss_weight=config.triplet_weight,
    )
    distiller.compile(_optimizer(config), loss=triplet if config.triplet_weight else None, jit_compile=config.jit_compile)
    return distiller, embedder


def evaluate(model, config, split="test"):
    """Recall@1/2/4/8, MAP@R and R-precision of an embedding model on a split."""
    embeddings, labels = embed(model, data(config, split))
    recalls = recall_at_k(embeddings, labels)
    return {
        **{f"recall_at_{k}": value for k, value in recalls.items()},
        "map_at_r": map_at_r(embeddings, labels),
        "r_precision": r_precision(embeddings, labels),
        "items": int(len(labels)),
        "params": int(model.count_params()),
    }


def train(config, folder: RunFolder, teacher=None, verbose=1):
    """Trains one model in a prepared `folder`; returns its test metrics, those of its best epoch.

    Everything that can fail before training (weights, data, the teacher's
    fit to the data) is done before the folder is written.
    """
    if folder.status() == "complete":
        return read_json(folder.path / "metrics.json")
    keras.utils.set_random_seed(config.seed)
    if teacher is not None:
        check_fits_data(teacher, config, "teacher")
    model, embedder = _model(config, teacher)
    validation = data(config, "validation")
    batches = _batches(config, model, first_epoch=resumed_epoch(folder.path / "backup"))
    with folder.running(config):
        callbacks = [
            RetrievalRecall(validation),  # first: the others read its logs
            BestCheckpoint(embedder, folder.path / "best.keras"),
            keras.callbacks.CSVLogger(str(folder.path / "history.csv"), append=True),
            keras.callbacks.TensorBoard(str(folder.path / "tensorboard")),
            # Kept after fit: a run stopped while evaluating resumes there, not at epoch 0.
            keras.callbacks.BackupAndRestore(str(folder.path / "backup"), delete_checkpoint=False),
        ]
        model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
        best = keras.models.load_model(folder.path / "best.keras")
        metrics = {**evaluate(best, config), **read_json(folder.path / "best.json")}
        write_json(folder.path / "metrics.json", metrics)
        report.plot_report(folder.path / "report.png", {folder.path.name: metrics}, {folder.path.name: read_history(folder.path)})
    shutil.rmtree(folder.path / "backup", ignore_errors=True)
    folder.set_status("complete")
    return metrics


def tune(config, folder: RunFolder, teacher, tuner, max_trials, verbose=1):
    """Searches the loss weights on validation Recall@1; saves and tests the best student.

    A stopped search starts again: keras-tuner's trials are not resumed.
    """
    from rkd_keras.tuning import RKDHyperModel, search_loss_weights

    if folder.status() == "complete":
        return read_json(folder.path / "metrics.json")
    keras.utils.set_random_seed(config.seed)
    check_fits_data(teacher, config, "teacher")
    _embedder(config)  # refuses unavailable weights before the search starts
    hypermodel = RKDHyperModel(
        teacher,
        lambda: _embedder(config),
        task_loss=TripletLoss(margin=config.margin, sampling=config.sampling) if config.triplet_weight else None,
    )
    batches, validation = _batches(config), data(config, "validation")
    with folder.running(config):
        best_hp, student, _ = search_loss_weights(
            hypermodel, batches, validation, tuner=tuner, max_trials=max_trials, epochs=config.epochs,
            directory=str(folder.path), project_name="trials", verbose=verbose,
        )
        student.save(folder.path / "best.keras")
        write_json(folder.path / "best_hyperparameters.json", best_hp.values)
        metrics = {**evaluate(student, config), "hyperparameters": best_hp.values}
        write_json(folder.path / "metrics.json", metrics)
    folder.set_status("complete")
    return metrics
