"""The configuration of a run: its settings, where they come from, and the checks they pass.

Settings resolve as: the demo's teacher or student (`presets.DEMO`) ←
`--preset` ← `--config` file ← flags. Every value is checked where it enters,
with its allowed range in the message, and the settings that depend on each
other are checked before anything is trained or written. No TensorFlow here:
a mistake is reported before the library loads.
"""

import dataclasses
import typing
from pathlib import Path

from rkd_keras import image_folders, presets
from rkd_keras.checks import check_choice, check_classes, check_term_specs, check_dataset_arguments, check_int, check_number, check_task
from rkd_keras.choices import (
    BACKBONE_MIN_IMAGE_SIZE,
    BACKBONES,
    CLASS_SPLIT_DATASETS,
    CLASSIFICATION_CLASSES,
    DATASET_CLASSES,
    DATASETS,
    TASKS,
    TRIPLET_SAMPLINGS,
)


class ConfigError(ValueError):
    """A flag, config-file value or setting is unknown, of the wrong type, or out of range."""


def class_label(text: str):
    """A class on the command line: a label (an integer) or, for an image folder, a class name."""
    return int(text) if text.isdigit() else text


def _setting(default, help, **rule):
    """A RunConfig field: its default, its `--help` text and its allowed values."""
    metadata = {"help": help, **rule}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_DEMO = presets.DEMO["teacher"]


@dataclasses.dataclass
class RunConfig:
    """Everything a `train-teacher`, `distill`, `evaluate`, `tune` or `compare` run depends on; saved as config.json.

    Defaults: the demo's teacher (`presets.DEMO["teacher"]`). `task`, `terms`
    (and the classification runs of `compare`) are config keys without a flag.
    """

    task: str = _setting("metric", "metric (Recall@K on unseen classes) or classification (accuracy)", choices=TASKS, flag=False)
    dataset: str = _setting(_DEMO["dataset"], "dataset (metric learning: split into disjoint training and test classes)", choices=DATASETS)
    train_classes: list | None = _setting(
        None, "metric learning: the labels (a folder's: or class names) that train, the others test (none: the paper's split)",
        metavar="CLASS", item=class_label,
    )
    image_size: int = _setting(_DEMO["image_size"], "side of the square input images", low=1)
    resize_size: int | None = _setting(
        _DEMO["resize_size"], "side images are resized to before cropping; none: image_size · 256/224", low=1
    )
    augment: bool = _setting(_DEMO["augment"], "random crops and flips of the training images")
    channels: int = _setting(_DEMO["channels"], "1 (grey) or 3 (colour; grey images are repeated)", choices=(1, 3))
    backbone: str = _setting(_DEMO["backbone"], "network under the embedding layer", choices=BACKBONES)
    width: int = _setting(_DEMO["width"], "channels of small_cnn's first block", low=1)
    embedding_dim: int = _setting(_DEMO["embedding_dim"], "width of the embedding", low=1)
    l2_normalize: bool = _setting(_DEMO["l2_normalize"], "project embeddings onto the unit sphere")
    weights: str | None = _setting(
        _DEMO["weights"], "initial backbone weights: none, imagenet (needs --download unless cached) or a file"
    )
    epochs: int = _setting(_DEMO["epochs"], "training epochs", low=1)
    steps_per_epoch: int = _setting(_DEMO["steps_per_epoch"], "P×K batches per epoch", low=1)
    classes_per_batch: int = _setting(_DEMO["classes_per_batch"], "P: classes in each batch", low=1)
    samples_per_class: int = _setting(_DEMO["samples_per_class"], "K: images of each class in each batch", low=1)
    learning_rate: float = _setting(_DEMO["learning_rate"], "Adam's learning rate", low=0, low_open=True)
    lr_decay_epochs: list = _setting(
        _DEMO["lr_decay_epochs"], "epochs after which the learning rate is multiplied by lr_decay_factor"
    )
    lr_decay_factor: float = _setting(_DEMO["lr_decay_factor"], "learning-rate step factor", low=0, high=1, low_open=True)
    weight_decay: float = _setting(_DEMO["weight_decay"], "Adam's decoupled weight decay", low=0)
    triplet_weight: float = _setting(_DEMO["triplet_weight"], "weight of the triplet loss (0: none)", low=0)
    margin: float = _setting(_DEMO["margin"], "triplet margin", low=0)
    sampling: str = _setting(_DEMO["sampling"], "triplet negative sampling", choices=TRIPLET_SAMPLINGS)
    # The few-shot task's loss (Snell et al. 2017): a P×K batch is an episode of P ways.
    prototypical_weight: float = _setting(
        0.0, "weight of the prototypical-network loss, instead of the triplet loss (0: none)", low=0
    )
    shots: int = _setting(1, "prototypical loss: support images of each class in a P×K batch, the others its queries", low=1)
    distance_weight: float = _setting(_DEMO["distance_weight"], "λ_D, weight of RKD-D (0: off)", low=0)
    angle_weight: float = _setting(_DEMO["angle_weight"], "λ_A, weight of RKD-A (0: off)", low=0)
    terms: list = _setting(
        [], "distillation terms instead of distance_weight/angle_weight: specs as rkd_keras.presets.term writes them",
        flag=False,
    )
    validation_fraction: float = _setting(
        0.1, "share of the training images held out to select the best epoch", low=0, high=0.5, low_open=True
    )
    max_train_items: int | None = _setting(_DEMO["max_train_items"], "training images read (none: all)", low=1)
    # Recall@8 needs 8 others for each query.
    max_eval_items: int | None = _setting(
        _DEMO["max_eval_items"], "validation and test images read (none: all)", low=9
    )
    seed: int = _setting(0, "seed of the weights, batches and sampling", low=0, high=2**32 - 1)
    jit_compile: bool = _setting(False, "compile training steps with XLA")
    # Distillation without augmentation runs the teacher once, not every epoch.
    cache_teacher: bool = _setting(True, "distill: compute the teacher's embeddings once")
    dataset_path: str | None = _setting(
        None, "dataset folder: the folder of one subfolder of images per class; fashion_mnist: the folder of its *-ubyte.gz files"
    )
    data_dir: str | None = _setting(None, "tensorflow-datasets data folder")
    manual_dir: str | None = _setting(None, "folder holding a dataset's original archive (offline)")
    download: bool = _setting(False, "let tensorflow-datasets and Keras download data and ImageNet weights")

    def __post_init__(self):
        try:
            for field in dataclasses.fields(self):
                setattr(self, field.name, _checked(field, getattr(self, field.name)))
            self._check_combination()
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def _check_combination(self):
        try:
            check_task(self.dataset, self.task)
        except ValueError as error:
            raise ValueError(f"dataset {error}") from None
        given = {"data_dir": self.data_dir, "manual_dir": self.manual_dir, "path": self.dataset_path}
        check_dataset_arguments(
            self.dataset, [name for name, value in given.items() if value is not None],
            spell=lambda name: "--" + {"path": "dataset_path"}.get(name, name).replace("_", "-"),
        )
        if self.dataset == "folder":
            if self.dataset_path is None:
                raise ValueError("dataset folder needs --dataset-path DIR, the folder that holds one subfolder of images per class.")
            self.image_folder()  # a missing or empty folder, or an empty class, is refused now
        if self.train_classes is not None:
            self._check_train_classes()
        if self.terms and (self.distance_weight or self.angle_weight):
            raise ValueError(
                "give terms or distance_weight/angle_weight, not both: the weights only set the default RKD terms "
                f"(received distance_weight {self.distance_weight}, angle_weight {self.angle_weight} and {len(self.terms)} terms)."
            )
        smallest = BACKBONE_MIN_IMAGE_SIZE[self.backbone]
        if self.image_size < smallest:
            raise ValueError(f"backbone {self.backbone} needs image_size >= {smallest}, received {self.image_size}.")
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= image_size ({self.image_size}).")
        if self.backbone != "small_cnn" and self.channels != 3:
            raise ValueError(f"backbone {self.backbone} needs channels=3 (grey images are repeated).")
        if self.weights == "imagenet" and self.backbone in ("small_cnn", "resnet18"):
            raise ValueError(f"backbone {self.backbone} has no ImageNet weights; use --weights none or a file.")

    def _check_train_classes(self):
        if self.task != "metric":
            raise ValueError(
                "train_classes chooses the training and the unseen classes of metric learning; classification "
                f"trains and tests on every class of {self.dataset}. Leave train_classes out."
            )
        names = [label for label in self.train_classes if isinstance(label, str)]
        if self.dataset == "folder":
            # Names become labels: config.json keeps the labels, and a resumed run compares them.
            self.train_classes = self.image_folder().labels_of(self.train_classes, "train_classes")
        elif names:
            raise ValueError(f"train_classes {names} are class names, which only an image folder has; give {self.dataset}'s labels.")
        if self.dataset not in CLASS_SPLIT_DATASETS:
            raise ValueError(
                f"train_classes needs a dataset whose other classes can be the test classes ({', '.join(CLASS_SPLIT_DATASETS)}); "
                f"{self.dataset}'s own splits are separate sets of classes."
            )
        total = self.total_classes()
        unknown = [label for label in self.train_classes if label >= total]
        if unknown:
            raise ValueError(f"train_classes {unknown} are not classes of {self.dataset}, whose labels are 0–{total - 1}.")
        if len(self.train_classes) < 2 or total - len(self.train_classes) < 2:
            raise ValueError(
                f"train_classes must leave at least 2 classes on each side (training and unseen test classes) of "
                f"{self.dataset}'s {total}; received {len(self.train_classes)} training classes."
            )

    def image_folder(self) -> image_folders.ImageFolder:
        """The scanned image folder of `dataset: folder`."""
        return image_folders.scan(self.dataset_path)

    def total_classes(self) -> int:
        """Classes of the dataset, training and test together."""
        if self.dataset == "folder":
            return len(self.image_folder().class_names)
        if self.task == "classification":
            return CLASSIFICATION_CLASSES[self.dataset]
        return sum(DATASET_CLASSES[self.dataset])

    def default_train_classes(self) -> list:
        """Metric learning's training labels when train_classes is not given."""
        if self.dataset == "folder":
            return self.image_folder().default_train_classes()
        return list(range(DATASET_CLASSES[self.dataset][0]))

    def training_classes(self) -> int:
        """Classes in the training split: what P×K batches draw from."""
        if self.task == "classification":
            return self.total_classes()
        return len(self.train_classes if self.train_classes is not None else self.default_train_classes())

    def test_classes(self) -> list | None:
        """The labels of the test split when train_classes chooses them (the others), else None (the default split)."""
        if self.train_classes is None:
            return None
        return [label for label in range(self.total_classes()) if label not in self.train_classes]


def field_kind(field) -> tuple:
    """A RunConfig field's type without `None`, and whether `None` is allowed."""
    kinds = [kind for kind in typing.get_args(field.type) if kind is not type(None)] or [field.type]
    return kinds[0], type(None) in typing.get_args(field.type)


def _checked(field, value):
    """`value` checked against the field's type and range; ints pass as floats, and so do
    strings that read as numbers (PyYAML reads `1e-3` as a string)."""
    kind, optional = field_kind(field)
    name, rule = field.name, {k: v for k, v in field.metadata.items() if k not in ("help", "flag", "metavar", "item")}
    if value is None and optional:
        return None
    if "choices" in rule:
        return check_choice(name, value, rule["choices"])
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, received {value!r}.")
        return value
    if kind is int:
        return check_int(name, value, low=rule.get("low"), high=rule.get("high"))
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, received {value!r}.") from None
        return check_number(name, value, **rule)
    if kind is list:
        return {"lr_decay_epochs": _checked_decay_epochs, "train_classes": _checked_classes, "terms": check_term_specs}[name](
            name, value
        )
    if name == "weights":
        return _checked_weights(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a folder path or null, received {value!r}.")
    if name == "manual_dir" and not Path(value).is_dir():
        raise ValueError(f"manual_dir {value} is not a folder; give the folder that holds the dataset's archive.")
    return value


def _checked_decay_epochs(name, value):
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of integers, received {value!r}.")
    epochs = [check_int(f"each of {name}", epoch, low=1) for epoch in value]
    if epochs != sorted(set(epochs)):
        raise ValueError(f"{name} must be increasing epochs, received {value!r}.")
    return epochs


def _checked_classes(name, value):
    # Names are an image folder's (checked with its classes); a dataset's labels are checked with its size.
    return check_classes(name, value, names=True)


def _checked_weights(value):
    if not isinstance(value, str):
        raise ValueError(f"weights must be none, imagenet or the path of a weights file, received {value!r}.")
    if value != "imagenet" and not Path(value).is_file():
        raise ValueError(f"weights must be none, imagenet or the path of a weights file; {value} is not a file.")
    return value


def check_training(config: RunConfig, role: str) -> None:
    """Checks between settings that a training run needs, before anything trains or is written.

    Args:
        config: The resolved settings.
        role: `"teacher"` (trained by the triplet loss) or `"student"`
            (distilled from a teacher, and/or trained by the triplet loss).

    Raises:
        ConfigError: the settings cannot train what was asked.
    """
    distils = config.distance_weight or config.angle_weight or any(spec["weight"] for spec in config.terms)
    if config.triplet_weight and config.prototypical_weight:
        raise ConfigError(
            "a run trains with one loss of the labels: give triplet_weight or prototypical_weight, not both "
            f"(received {config.triplet_weight} and {config.prototypical_weight})."
        )
    if config.task == "classification":
        if config.triplet_weight or config.prototypical_weight:
            loss = "triplet_weight" if config.triplet_weight else "prototypical_weight"
            raise ConfigError(
                f"classification trains with cross-entropy: {loss} must be 0, received {getattr(config, loss)}."
            )
        if role == "teacher" and distils:
            raise ConfigError("a classification teacher trains with cross-entropy alone: give it no terms.")
    elif role == "teacher":
        if distils:
            raise ConfigError(
                "a teacher trains with the triplet loss alone: distance_weight and angle_weight must be 0 and "
                f"terms empty, received {config.distance_weight}, {config.angle_weight} and {len(config.terms)} terms "
                "(distillation is for distill)."
            )
        if not (config.triplet_weight or config.prototypical_weight):
            raise ConfigError(
                "a teacher trains with the triplet loss (or the prototypical loss): triplet_weight must be > 0, "
                "received 0."
            )
    elif not (config.triplet_weight or config.prototypical_weight or distils):
        raise ConfigError(
            "nothing to train: triplet_weight, prototypical_weight, distance_weight, angle_weight and every term's "
            "weight are 0."
        )
    if config.prototypical_weight:
        # A class of no query gives no loss; one class gives every query probability 1.
        if config.samples_per_class <= config.shots:
            raise ConfigError(
                f"the prototypical loss needs samples_per_class > shots (each class's first {config.shots} images "
                f"are its support, the others its queries), received samples_per_class {config.samples_per_class}."
            )
        if config.classes_per_batch < 2:
            raise ConfigError(
                f"the prototypical loss needs classes_per_batch >= 2 (ways), received {config.classes_per_batch}."
            )
    if config.triplet_weight:
        # A class alone in its batch has no positive; one class has no negatives:
        # the triplet loss would be exactly 0 at every step.
        if config.samples_per_class < 2:
            raise ConfigError(
                "the triplet loss needs samples_per_class >= 2 (an anchor and a positive of each class), "
                f"received {config.samples_per_class}."
            )
        if config.classes_per_batch < 2:
            raise ConfigError(
                f"the triplet loss needs classes_per_batch >= 2 (negatives), received {config.classes_per_batch}."
            )
    if config.classes_per_batch * config.samples_per_class < 2:
        raise ConfigError("a batch of one image has no relations to learn: classes_per_batch × samples_per_class must be >= 2.")
    available = config.training_classes()
    if config.classes_per_batch > available:
        dataset = f"the image folder {config.dataset_path}" if config.dataset == "folder" else config.dataset
        which = "train_classes" if config.train_classes is not None else f"{dataset}'s training split"
        more = " or give more --train-classes" if config.train_classes is not None else ""
        raise ConfigError(
            f"classes_per_batch must be <= {available}, the classes of {which}, received {config.classes_per_batch}; "
            f"lower --classes-per-batch{more}."
        )
    if config.dataset == "folder" and config.samples_per_class >= 2:
        _check_two_images(config)


def _check_two_images(config):
    """Refuses a training class of one image: its K images of a P×K batch would be that image K times."""
    folder = config.image_folder()
    if config.task == "classification":
        labels = range(len(folder.class_names))
    else:
        labels = config.train_classes if config.train_classes is not None else config.default_train_classes()
    counts = folder.counts()
    single = [folder.class_names[label] for label in labels if counts[label] < 2]
    if single:
        raise ConfigError(
            f"image folder {config.dataset_path}: the training class {single[0]} has 1 image, and P×K batches need at "
            f"least 2 of each class (samples_per_class {config.samples_per_class}; one image would fill them with copies "
            "of itself); add images, or choose other --train-classes."
        )


def resolve_config(
    role: str, preset: str | None = None, config_file=None, overrides: dict | None = None, *, base: dict | None = None
) -> RunConfig:
    """The demo's settings of the role (or `base`) ← preset ← config file ← flags, checked into a `RunConfig`.

    Terms given in the config file or the flags replace the default RKD
    terms: `distance_weight` and `angle_weight` become 0 unless given there too
    (then the combination is refused).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or range;
            the message names the config file when the value came from it.
    """
    values = dict(base) if base is not None else presets.get("demo", role)
    if preset:
        values.update(presets.get(preset, role))
    from_file = read_config_file(config_file) if config_file else {}
    given = {**from_file, **(overrides or {})}
    if given.get("terms") and not {"distance_weight", "angle_weight"} & set(given):
        values.update(distance_weight=0.0, angle_weight=0.0)
    if config_file:
        values.update(from_file)
        try:
            _config(values)
        except ConfigError as error:
            raise ConfigError(f"config file {config_file}: {error}") from None
    return _config({**values, **(overrides or {})})


def _config(values):
    known = [field.name for field in dataclasses.fields(RunConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config keys {', '.join(unknown)}; known keys: {', '.join(known)}.")
    return RunConfig(**values)


class _DuplicateKey(ValueError):
    pass


def _unique_keys_loader(yaml):
    """yaml.SafeLoader refusing a key given twice in one mapping (plain YAML keeps the last in silence)."""

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(f"key {key} is given twice (lines {seen[key]} and {line}); keep one.")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def read_config_file(path) -> dict:
    """The mapping of settings in a JSON or YAML file (JSON is YAML too)."""
    import yaml  # here: only a run with --config pays for it

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        # A SafeLoader: plain data only, never Python objects (what yaml.safe_load does, with the key check).
        loader = _unique_keys_loader(yaml)(path.read_text())
        try:
            values = loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as error:
        raise ConfigError(f"config file {path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid JSON or YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values.")
    return values


def differences(saved: dict, given: dict) -> dict:
    """`{key: (saved value, given value)}` for every key whose values differ."""
    return {key: (saved.get(key), value) for key, value in given.items() if saved.get(key) != value}
