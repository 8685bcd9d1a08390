"""One run of the command line: its data, models and optimizer, training with checkpoints, and evaluation.

A run is metric learning (an embedding model, the triplet loss, Recall@K on
unseen classes, the best epoch by validation Recall@1) or classification (a
classifier, cross-entropy, accuracy on the test images, the best epoch by
validation accuracy); either distils from a teacher when its settings hold
terms or RKD weights.
"""

import math
import shutil

import keras
import numpy as np
import tensorflow as tf

from rkd_keras import recipes
from rkd_keras.cli import report
from rkd_keras.cli.inputs import check_keras_file
from rkd_keras.cli.runs import (
    BestCheckpoint, RunBackup, RunFolder, read_history, read_json, trim_history, usable_backup, write_json,
)
from rkd_keras.data import (
    folder_image_loader, image_paths, load_dataset, materialize, num_classes, pk_batches, preprocess_image,
)
from rkd_keras.distiller import Distiller, TermWarmup
from rkd_keras.embedding_files import read_embeddings
from rkd_keras.losses import PrototypicalLoss, TripletLoss
from rkd_keras.presets import few_shot_key
from rkd_keras.retrieval import (
    RetrievalRecall, embed, embed_with_gallery, few_shot_accuracy, map_at_r, r_precision, recall_at_k,
)
from rkd_keras.terms import INPUTS, TEACHER_TENSORS, build_terms

# The log key whose best epoch a run keeps, by task: the curves its report draws.
MONITOR = report.VALIDATION
# Teacher tensors are cached for distillation (see `_batches`) only up to this
# size: feature maps of every training image would not fit in memory.
TEACHER_CACHE_BYTES = 256 * 2**20


def load_model_file(path, what: str) -> keras.Model:
    """Loads a `.keras` file checked by `check_keras_file`, naming the file if Keras cannot read it."""
    path = check_keras_file(path, what)
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises ValueError, TypeError, KeyError... for a file it cannot read
        raise ValueError(f"{what} file {path} could not be loaded by Keras: {error}") from error


def check_embedding_model(model, path) -> None:
    """Refuses a classifier, whose logits Recall@K would rank as if they were embeddings.

    A classifier is recognised by its output layer, `logits`, as
    `rkd_keras.models.classifier_model` names it.
    """
    try:
        classifier = model.get_layer("logits").output is model.outputs[0]
    except (ValueError, AttributeError):  # no such layer, or a model without one output
        classifier = False
    if classifier:
        raise ValueError(
            f"the model {path} is a classifier (its output layer is logits), and evaluate measures the retrieval "
            "(Recall@K, MAP@R) of embedding models; a classifier's top-1 accuracy is in its run's metrics.json "
            "and its comparison's table.md (rkd-keras compare --task classification)."
        )


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


def check_available(configs) -> None:
    """Refuses runs whose data or initial weights are neither on this machine nor to be downloaded.

    `train` checks its own run before it writes the run's folder; the demo
    and `compare` call this first, so that their folder of runs is not
    written either. Each data source, and each network with given weights
    (built: Keras reads the weights), is checked once.
    """
    sources, networks = {}, {}
    for config in configs:
        source = (config.dataset, config.task, config.dataset_path, config.data_dir, config.manual_dir, config.download)
        sources.setdefault((*source, config.channels, tuple(config.train_classes or ())), config)
        if config.weights is not None:
            architecture = (config.task, config.backbone, config.width, config.embedding_dim, input_shape(config))
            networks.setdefault((*architecture, config.weights, config.download), config)
    for config in sources.values():
        data(config, "test")
        check_images(config)
    for config in networks.values():
        _network(config)


def check_run(config, teacher=None, teacher_embeddings=None) -> None:
    """Refuses a run as `train` would before it writes the run folder, in the same order: its images, the
    teacher's fit to them (or the teacher embeddings file's rows and width), its network's weights, its data.
    A command runs these before it takes the folder's lock."""
    check_images(config)
    if teacher is not None:
        check_fits_data(teacher, config, "teacher")
    if teacher_embeddings is None:
        _network(config)
    else:
        rows = teacher_rows(config, teacher_embeddings)[1]
        model, _ = _model(config, None, from_embeddings=True)
        if isinstance(model, Distiller):
            check_teacher_width(model, rows.shape[1], teacher_embeddings)
    data(config, "validation")


def check_images(config) -> None:
    """Decodes every image of an image folder's splits once (training, validation, test), so that a corrupt or
    unreadable file is refused before a run folder is written; nothing for the named datasets."""
    if config.dataset == "folder":
        for split in ("train", "validation", "test"):
            data(config, split)


def _data_options(config, split):
    return dict(
        task=config.task, channels=config.channels, data_dir=config.data_dir, manual_dir=config.manual_dir, path=config.dataset_path,
        download=config.download, validation_fraction=config.validation_fraction,
        classes=config.test_classes() if split == "test" else config.train_classes,
    )


def _stored_sizes(config) -> dict:
    """The size training images are stored at: resized, and, when augmented, cropped and flipped per epoch later."""
    resize_size = recipes.resize_size(vars(config))
    stored_size = resize_size if config.augment else config.image_size
    return dict(image_size=stored_size, resize_size=resize_size, augment=False)


def data(config, split, decode=True):
    """The split's images: unbatched stored training images, or batched evaluation images.

    `decode=False` (an image folder's training split): its `(path, label)`
    pairs, decoded by `folder_image_loader(**_stored_sizes(config))`.
    """
    options = _data_options(config, split)
    resize_size = recipes.resize_size(vars(config))
    if split == "train":
        images = load_dataset(config.dataset, "train", **_stored_sizes(config), decode=decode, **options)
        return images.take(config.max_train_items) if config.max_train_items else images
    images = load_dataset(config.dataset, split, image_size=config.image_size, resize_size=resize_size, augment=False, **options)
    if config.max_eval_items:
        # Validation is read at every epoch end: decode, filter and resize once,
        # and keep these few items in memory (the demo's full pass took ~1 s).
        images = images.take(config.max_eval_items).cache()
    return images.batch(256)


def embedding_sources(config) -> list:
    """What `embed` writes: `[(unbatched images, their paths)]`, every image of the dataset, as training reads them.

    For a folder every image under it (in its fixed order); for a named
    dataset its training and its test images (without a validation hold-out:
    the validation images are among the training ones).
    """
    resize_size = recipes.resize_size(vars(config))
    sizes = dict(image_size=config.image_size, resize_size=resize_size, augment=False)
    if config.dataset == "folder":
        # Every class, in the folder's order: the metric split of all labels is every image.
        options = {**_data_options(config, "train"), "task": "metric", "validation_fraction": 0.0}
        options["classes"] = list(range(len(config.image_folder().class_names)))
        parts = [("train", options)]
    else:
        parts = [(split, {**_data_options(config, split), "validation_fraction": 0.0}) for split in ("train", "test")]
    sources = []
    for split, options in parts:
        images = load_dataset(config.dataset, split, **sizes, **options)
        paths_options = {key: value for key, value in options.items() if key != "channels"}
        sources.append((images, image_paths(config.dataset, split, **paths_options)))
    return sources


def _training_paths(config) -> list:
    """The path of each training image `data(config, "train")` gives, in its order (`image_paths`)."""
    options = {key: value for key, value in _data_options(config, "train").items() if key != "channels"}
    paths = image_paths(config.dataset, "train", **options)
    return paths[: config.max_train_items] if config.max_train_items else paths


def teacher_rows(config, file):
    """`(paths, rows)` of the training images from a teacher-embeddings file: each image's row, or an error naming it."""
    paths = _training_paths(config)
    return paths, read_embeddings(file, paths=paths)


def check_teacher_width(distiller, width: int, file) -> None:
    """Refuses a file whose width a per-example term cannot compare with the student's tensor (relations take any)."""
    teacher = keras.KerasTensor((None, width))
    for term in distiller.terms:
        if term.weight and not term.relational:
            layer = term.student_layer
            student = distiller.student.outputs[0] if layer is None else distiller.student.get_layer(layer).output
            where = "the student's output" if layer is None else f"student layer {layer!r}"
            term.check_shapes(teacher, student, f"the teacher embeddings of {file} (width {width})", where)


def _batches(config, model=None, first_epoch=0, teacher_embeddings=None):
    """P×K training batches; with the teacher's embeddings cached when `model` is a Distiller.

    `teacher_embeddings`: the rows of the training images (`teacher_rows`),
    paired with them: the Distiller has no teacher model.
    """
    augment = None
    if config.augment:
        size = config.image_size

        def augment(image, label):
            return preprocess_image(image, image_size=size, resize_size=image.shape[0], augment=True, channels=config.channels), label

    cached = isinstance(model, Distiller) and config.cache_teacher and not config.augment
    if config.dataset == "folder" and teacher_embeddings is None and not cached:
        # Paths, not images: pk_batches keeps the split's paths and decodes only the images it samples, in
        # parallel, so memory does not grow with the folder (issue 20); the same pixels as decoded ones.
        train = data(config, "train", decode=False)
        loader = folder_image_loader(**_stored_sizes(config), channels=config.channels)
        map_fn = loader if augment is None else lambda path, label: augment(*loader(path, label))
    else:
        train, map_fn = data(config, "train"), augment
    if teacher_embeddings is not None:
        images, labels = materialize(train)
        train = tf.data.Dataset.from_tensor_slices(({INPUTS: images, TEACHER_TENSORS: teacher_embeddings}, labels))
    elif cached:
        # No random augmentation: the frozen teacher's tensors are the same every epoch. One pass over the
        # split gives both the count the cache is sized by and the images the teacher runs on.
        images, labels = materialize(train)
        if _cache_fits(model, len(labels)):
            train = tf.data.Dataset.from_tensor_slices((model.cache_teacher_embeddings(images), labels))
    return pk_batches(
        train, config.classes_per_batch, config.samples_per_class,
        seed=config.seed, num_batches=config.steps_per_epoch, map_fn=map_fn, first_epoch=first_epoch,
    )


def _cache_fits(distiller, count: int):
    """Whether the teacher tensors its terms read, for `count` training images, fit `TEACHER_CACHE_BYTES`."""
    layers = {term.teacher_layer for term in distiller.terms if term.weight > 0}
    teacher = distiller.teacher
    shapes = [teacher.outputs[0].shape if layer is None else teacher.get_layer(layer).output.shape for layer in layers]
    per_image = sum(4 * math.prod(shape[1:]) for shape in shapes)
    return per_image * count <= TEACHER_CACHE_BYTES


def _length(dataset) -> int:
    """The number of elements of a finite dataset, counted if its cardinality is unknown (after a filter)."""
    known = int(dataset.cardinality())
    return known if known >= 0 else int(dataset.reduce(0, lambda count, *_: count + 1))


def _network(config):
    """The model a run trains: an embedding model (metric learning) or a classifier."""
    classes = None
    if config.task == "classification":
        classes = num_classes(config.dataset, "train", task="classification", path=config.dataset_path)
    return recipes.network(vars(config), num_classes=classes, download=config.download)


def _model(config, teacher, from_embeddings=False):
    """The model to fit and the network it trains (the same, unless it distils from `teacher` or its embeddings)."""
    network = _network(config)
    if config.task == "classification":
        task_loss, metrics, weight = keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"], 1.0
    elif config.prototypical_weight:
        task_loss, metrics, weight = PrototypicalLoss(shots=config.shots), None, config.prototypical_weight
    else:
        task_loss, metrics, weight = TripletLoss(margin=config.margin, sampling=config.sampling), None, config.triplet_weight
    distils = config.terms or config.distance_weight or config.angle_weight
    if (teacher is None and not from_embeddings) or not distils:
        network.compile(recipes.optimizer(vars(config)), loss=task_loss, loss_weights=weight, metrics=metrics, jit_compile=config.jit_compile)
        return network, network
    terms = dict(terms=build_terms(config.terms)) if config.terms else dict(
        distance_weight=config.distance_weight, angle_weight=config.angle_weight
    )
    distiller = Distiller(teacher, network, task_loss_weight=weight, **terms)
    distiller.compile(
        recipes.optimizer(vars(config)), loss=task_loss if weight else None, metrics=metrics, jit_compile=config.jit_compile
    )
    return distiller, network


def _warmups(config, model) -> list:
    """`[TermWarmup]` when a distilling run's terms ramp up (`warmup_epochs` in their specs), else `[]`."""
    epochs = {spec["name"]: spec["warmup_epochs"] for spec in config.terms if spec.get("warmup_epochs")}
    return [TermWarmup(epochs)] if epochs and isinstance(model, Distiller) else []


def evaluate(model, config, split="test", gallery_model=None, few_shot=None):
    """The task's metrics of a model on a split: Recall@1/2/4/8, MAP@R and R-precision, or accuracy and cross-entropy.

    With a `gallery_model` (the teacher that indexed the gallery), the same
    metrics of the asymmetric protocol follow as `asym_recall_at_K`,
    `asym_map_at_r` and `asym_r_precision`. With `few_shot` (metric
    learning; a protocol as `presets.COMPARE["few_shot"]["evaluation"]`), the
    few-shot accuracies of the same embeddings too (`few_shot_metrics`).
    """
    if config.task == "classification":
        return _classification_metrics(model, config, split)
    if gallery_model is None:
        embeddings, labels = embed(model, data(config, split))
        gallery = None
    else:
        embeddings, gallery, labels = embed_with_gallery(model, gallery_model, data(config, split))
    metrics = _retrieval_metrics(embeddings, labels)
    if gallery is not None:
        metrics.update({f"asym_{name}": value for name, value in _retrieval_metrics(embeddings, labels, gallery).items()})
    if few_shot is not None:
        metrics.update(few_shot_metrics(embeddings, labels, few_shot, config.seed))
    return {**metrics, "items": int(len(labels)), "params": int(model.count_params())}


def few_shot_metrics(embeddings, labels, protocol, seed: int) -> dict:
    """`{few_shot_key: accuracy, few_shot_key_half_width: its 95 % half-width}` for each (ways, shots) of `protocol`.

    `protocol`: `{"settings": [(ways, shots), ...], "queries", "episodes"}`.
    The episodes are drawn with `seed` (the run's), so every model of a seed
    is tested on the same episodes.
    """
    results = {}
    for ways, shots in protocol["settings"]:
        accuracy, half_width = few_shot_accuracy(
            embeddings, labels, ways=ways, shots=shots, queries=protocol["queries"], episodes=protocol["episodes"], seed=seed,
        )
        key = few_shot_key(ways, shots)
        results[key], results[f"{key}{report.HALF_WIDTH}"] = accuracy, half_width
    return results


# The rows of every metric-learning table that train nothing (issue 21): what a trained model must beat
# before a claim about it shows that learning, not the test, made the difference.
CONTROLS = {
    "raw_pixels": "control: the flattened preprocessed test images, Euclidean, no model",
    "untrained": "control: the student's architecture, seeded, no training",
    "untrained_wide": "control: the first method's network of the teacher's embedding width, seeded, no training",
}


def controls(student_config, wide_config=None, teacher=None, few_shot=None) -> dict:
    """`{control: test metrics}` of the raw pixels and of the untrained student of `student_config` (its seed).

    Both are evaluated as every run is (`evaluate`, the same test images); a
    raw-pixel "model" is a Flatten layer of no parameters. With `wide_config`
    (a student of the teacher's embedding width) and its `teacher`, the
    untrained student of that width too, also against the teacher's gallery:
    the control of the asymmetric protocol. `few_shot`: as `evaluate`'s.
    """
    pixels = keras.Sequential([keras.Input(input_shape(student_config)), keras.layers.Flatten()], name="raw_pixels")
    keras.utils.set_random_seed(student_config.seed)
    untrained = _network(student_config)
    results = {
        "raw_pixels": evaluate(pixels, student_config, few_shot=few_shot),
        "untrained": evaluate(untrained, student_config, few_shot=few_shot),
    }
    if wide_config is not None:
        keras.utils.set_random_seed(wide_config.seed)
        results["untrained_wide"] = evaluate(_network(wide_config), wide_config, gallery_model=teacher)
    return results


def _retrieval_metrics(embeddings, labels, gallery=None):
    recalls = recall_at_k(embeddings, labels, gallery=gallery)
    return {
        **{f"recall_at_{k}": value for k, value in recalls.items()},
        "map_at_r": map_at_r(embeddings, labels, gallery=gallery),
        "r_precision": r_precision(embeddings, labels, gallery=gallery),
    }


def _classification_metrics(model, config, split):
    """Top-1 accuracy and the mean cross-entropy (nats, float64 log-softmax) of a classifier on a split."""
    logits, labels = embed(model, data(config, split))
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
        "cross_entropy": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
        "items": int(len(labels)),
        "params": int(model.count_params()),
    }


def train(
    config, folder: RunFolder, teacher=None, verbose=1, plot=True, teacher_embeddings=None, gallery_model=None, few_shot=None,
):
    """Trains one model in a prepared `folder`; returns its test metrics, those of its best epoch.

    The best epoch is the one of highest validation Recall@1 (metric
    learning) or validation accuracy (classification), on images held out
    from the training split, never on the test split. Everything that can
    fail before training (weights, data, the teacher's fit to the data) is
    done before the folder is written. `plot=False` leaves out the run's
    `report.png` (a comparison draws one picture of all its runs).
    `teacher_embeddings`: instead of `teacher`, a teacher-embeddings file
    (`rkd-keras embed`) holding a row for every training image.
    `gallery_model` (metric learning; a model of the student's embedding
    width, e.g. the teacher): the test metrics also hold those of the
    asymmetric protocol, `asym_*` (see `evaluate`). `few_shot` (a protocol,
    see `few_shot_metrics`): the test metrics also hold the few-shot accuracies.
    """
    if folder.status() == "complete":
        return read_json(folder.path / "metrics.json")
    keras.utils.set_random_seed(config.seed)
    check_images(config)
    if teacher is not None:
        check_fits_data(teacher, config, "teacher")
    rows = None
    if teacher_embeddings is not None:
        rows = teacher_rows(config, teacher_embeddings)[1]
    model, network = _model(config, teacher, from_embeddings=rows is not None)
    if rows is not None and isinstance(model, Distiller):
        check_teacher_width(model, rows.shape[1], teacher_embeddings)
    validation = data(config, "validation")
    start, backup = usable_backup(folder.path / "backup")
    batches = _batches(config, model, first_epoch=start, teacher_embeddings=rows)
    monitor = MONITOR[config.task]
    with folder.running(config):
        trim_history(folder.path / "history.csv", start)
        # Metric learning: Recall@K written into the logs, first, as the others read it.
        scores = [RetrievalRecall(validation)] if config.task == "metric" else []
        callbacks = [
            *scores,
            *_warmups(config, model),
            BestCheckpoint(network, folder.path / "best.keras", monitor=monitor),
            keras.callbacks.CSVLogger(str(folder.path / "history.csv"), append=True),
            keras.callbacks.TensorBoard(str(folder.path / "tensorboard")),
            # Kept after fit: a run stopped while evaluating resumes there, not at epoch 0.
            RunBackup(folder.path / "backup", backup),
        ]
        # Classification: fit evaluates the loss and accuracy on validation after each epoch (val_accuracy);
        # its number of batches given, as Keras warns of "running out of data" on a dataset of unknown length.
        model.fit(
            batches, epochs=config.epochs, initial_epoch=start, callbacks=callbacks, verbose=verbose, shuffle=False,
            validation_data=None if scores else validation, validation_steps=None if scores else _length(validation),
        )
        best = keras.models.load_model(folder.path / "best.keras")
        metrics = {
            **evaluate(best, config, gallery_model=gallery_model, few_shot=few_shot), **read_json(folder.path / "best.json"),
        }
        write_json(folder.path / "metrics.json", metrics)
        if plot:
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
    check_images(config)
    _network(config)  # refuses unavailable weights before the search starts
    hypermodel = RKDHyperModel(
        teacher,
        lambda: _network(config),
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
