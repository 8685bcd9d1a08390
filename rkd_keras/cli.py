"""`rkd-keras`: train a teacher, distil a student, evaluate, export, and the demo.

Every run writes a folder `runs/<name>/`: the resolved `config.json`,
`status.json` (running / complete / incomplete), `history.csv`,
`metrics.json`, `tensorboard/`, the best checkpoint `best.keras` (selected on
a validation split carved from the training classes) and `report.png`.
"""

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

from rkd_keras import _report
from rkd_keras.data import DATASETS, DatasetNotAvailableError
from rkd_keras.losses import TRIPLET_SAMPLINGS
from rkd_keras.models import BACKBONES, WeightsNotAvailableError


@dataclasses.dataclass
class RunConfig:
    """Everything a `train-teacher` or `distill` run depends on; saved as config.json."""

    dataset: str = "fashion_mnist"
    image_size: int = 28
    resize_size: int | None = None
    augment: bool = False
    channels: int = 1
    backbone: str = "small_cnn"
    width: int = 32
    embedding_dim: int = 128
    l2_normalize: bool = True
    weights: str | None = None
    epochs: int = 6
    steps_per_epoch: int = 80
    classes_per_batch: int = 5
    samples_per_class: int = 12
    learning_rate: float = 3e-3
    lr_decay_epochs: list = dataclasses.field(default_factory=list)
    lr_decay_factor: float = 0.1
    weight_decay: float = 0.0
    triplet_weight: float = 1.0
    margin: float = 0.2
    sampling: str = "distance_weighted"
    distance_weight: float = 0.0
    angle_weight: float = 0.0
    validation_fraction: float = 0.1
    max_train_items: int | None = 20_000
    max_eval_items: int | None = 4_000
    seed: int = 0
    jit_compile: bool = False
    # Distillation without augmentation runs the teacher once, not every epoch.
    cache_teacher: bool = True
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = False

    def __post_init__(self):
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("sampling", self.sampling, TRIPLET_SAMPLINGS)
        _check_choice("channels", self.channels, (1, 3))
        if self.backbone != "small_cnn" and self.channels != 3:
            raise ConfigError(f"backbone {self.backbone} needs channels=3 (grey images are repeated).")


class ConfigError(ValueError):
    """A flag or config-file value is unknown or of the wrong type."""


def _check_choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; received {value!r}.")


# The paper's recipe (see README): ResNet50-512 teacher, L2-normalized, trained
# with distance-weighted triplet loss; ResNet18-128 student without L2,
# trained by RKD-DA alone. Batches of 25 classes × 5 images (the paper: 128).
_PAPER_TEACHER = dict(
    image_size=224, augment=True, channels=3, backbone="resnet50", embedding_dim=512, l2_normalize=True,
    weights="imagenet", epochs=40, steps_per_epoch=100, classes_per_batch=25, samples_per_class=5,
    learning_rate=1e-5, lr_decay_epochs=[25, 30, 35], lr_decay_factor=0.5, weight_decay=1e-5,
    max_train_items=None, max_eval_items=None,
)
_PAPER_STUDENT = dict(
    _PAPER_TEACHER, backbone="resnet18", embedding_dim=128, l2_normalize=False, weights=None, epochs=80,
    learning_rate=1e-4, lr_decay_epochs=[40, 60], lr_decay_factor=0.1, triplet_weight=0.0,
    distance_weight=1.0, angle_weight=2.0,
)
PRESETS = {
    "cub200": {"teacher": dict(_PAPER_TEACHER, dataset="cub200"), "student": dict(_PAPER_STUDENT, dataset="cub200")},
    "cars196": {"teacher": dict(_PAPER_TEACHER, dataset="cars196"), "student": dict(_PAPER_STUDENT, dataset="cars196")},
    "sop": {
        "teacher": dict(_PAPER_TEACHER, dataset="sop"),
        "student": dict(_PAPER_STUDENT, dataset="sop", epochs=120, lr_decay_epochs=[40, 80], steps_per_epoch=500),
    },
}

# The offline demo on Fashion-MNIST: the default teacher (128-d) and students
# (32-d, ~15× smaller) trained by the triplet loss alone or by RKD alone.
DEMO_STUDENTS = {
    "triplet": dict(triplet_weight=1.0, distance_weight=0.0, angle_weight=0.0),
    "rkd_d": dict(distance_weight=1.0, angle_weight=0.0),
    "rkd_a": dict(distance_weight=0.0, angle_weight=2.0),
    "rkd_da": dict(distance_weight=1.0, angle_weight=2.0),
}


# A student is distilled as the paper does unless told otherwise: RKD-DA, no
# task loss, no L2 normalization; 15× smaller than the default teacher.
ROLE_DEFAULTS = {
    "teacher": {},
    "student": dict(width=8, embedding_dim=32, l2_normalize=False, triplet_weight=0.0, distance_weight=1.0, angle_weight=2.0),
}


def resolve_config(role, preset=None, config_file=None, overrides=None):
    """Defaults of the role ← preset ← config file ← flags, validated into a `RunConfig`."""
    values = {**ROLE_DEFAULTS[role], **(PRESETS[preset][role] if preset else {})}
    if config_file:
        values.update(_read_config_file(config_file))
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config keys {', '.join(unknown)}; known keys: {', '.join(fields)}.")
    return RunConfig(**{name: _coerce(name, value, fields[name].type) for name, value in values.items()})


def _coerce(name, value, annotation):
    """Checks a config value against its field's type; ints are accepted as floats."""
    kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)] or [annotation]
    kind, optional = kinds[0], type(None) in typing.get_args(annotation)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) and kind is not list:
        return value
    expected = "a list of integers" if kind is list else kind.__name__ + (" or null" if optional else "")
    raise ConfigError(f"{name} must be {expected}, received {value!r}.")


def _read_config_file(path):
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        # safe_load: plain data only, never Python objects; JSON is YAML too.
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid JSON or YAML: {error}".replace("\n", " ")) from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values.")
    return values


def _none_or_text(text):
    return None if text.lower() == "none" else text


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not the usage block: what is wrong and where to look.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_flags(parser, role):
    flags = parser.add_argument_group("run configuration (flags override --preset and --config)")
    flags.add_argument("--preset", choices=sorted(PRESETS), help=f"the paper's {role} recipe for a dataset")
    flags.add_argument("--config", help="JSON or YAML file of RunConfig keys")
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = ([k for k in typing.get_args(field.type) if k is not type(None)] or [field.type])[0]
        # SUPPRESS: only flags given on the command line override, `none` included.
        if kind is bool:
            flags.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif kind is list:
            flags.add_argument(flag, type=int, nargs="*", default=argparse.SUPPRESS, metavar="EPOCH")
        elif field.name == "weights":
            flags.add_argument(flag, type=_none_or_text, default=argparse.SUPPRESS, help="none, imagenet or a file")
        else:
            flags.add_argument(flag, type=kind, default=argparse.SUPPRESS)
    common = parser.add_argument_group("run folder")
    common.add_argument("--name", help="run folder name (default: the subcommand)")
    common.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
    common.add_argument("--resume", action="store_true", help="continue the interrupted run of this name")
    common.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser():
    parser = _Parser(prog="rkd-keras", description="Relational Knowledge Distillation (Park et al., CVPR 2019).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="offline demo on Fashion-MNIST: teacher, triplet student, RKD students")
    demo.add_argument("--quick", action="store_true", help="a few steps of each model (about 2 minutes)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, help="epochs of every model (default 6)")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--runs-dir", default="runs")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo of this name")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    teacher = commands.add_parser("train-teacher", help="train an embedding teacher with the triplet loss")
    _add_run_flags(teacher, "teacher")

    distill = commands.add_parser("distill", help="train a student from a frozen teacher with RKD")
    distill.add_argument("--teacher", required=True, help="teacher .keras file (e.g. runs/NAME/best.keras)")
    _add_run_flags(distill, "student")

    evaluate = commands.add_parser("evaluate", help="Recall@K, MAP@R and R-precision of a model")
    evaluate.add_argument("--model", required=True, help=".keras file of an embedding model")
    evaluate.add_argument("--split", default="test", choices=["test", "validation"])
    evaluate.add_argument("--output", help="write the metrics to this JSON file")
    _add_run_flags(evaluate, "student")

    tune = commands.add_parser("tune", help="search the RKD loss weights and learning rate with keras-tuner")
    tune.add_argument("--teacher", required=True, help="teacher .keras file (e.g. runs/NAME/best.keras)")
    tune.add_argument("--tuner", default="random", choices=["random", "bayesian", "hyperband"])
    tune.add_argument("--max-trials", type=int, default=10, help="trials (random, bayesian)")
    _add_run_flags(tune, "student")

    export = commands.add_parser("export", help="export a student as a TensorFlow SavedModel")
    export.add_argument("--model", required=True, help=".keras file of a student or a Distiller")
    export.add_argument("--output", required=True, help="SavedModel folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, DatasetNotAvailableError, WeightsNotAvailableError, ValueError, OSError) as error:
        print(f"rkd-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nrkd-keras {args.command}: interrupted; the run folder is marked incomplete. "
            "Continue it with the same command and --resume.",
            file=sys.stderr,
        )
        return 130


def _verbose(args):
    """Keras progress bars on a terminal, one line per epoch in a log file, none with --quiet."""
    return 0 if args.quiet else 1 if sys.stdout.isatty() else 2


def _overrides(args):
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}


def _run_folder(args, default_name):
    from rkd_keras._runs import RunFolder

    return RunFolder(Path(args.runs_dir) / (args.name or default_name), resume=args.resume)


def _train_teacher(args):
    from rkd_keras import _runs

    config = resolve_config("teacher", args.preset, args.config, _overrides(args))
    result = _runs.train(config, _run_folder(args, "teacher"), teacher_path=None, verbose=_verbose(args))
    _report.print_table({"teacher": result})
    return 0


def _distill(args):
    from rkd_keras import _runs

    config = resolve_config("student", args.preset, args.config, _overrides(args))
    if not Path(args.teacher).is_file():
        raise FileNotFoundError(f"teacher file {args.teacher} does not exist.")
    result = _runs.train(config, _run_folder(args, "student"), teacher_path=args.teacher, verbose=_verbose(args))
    _report.print_table({"student": result})
    return 0


def _evaluate(args):
    from rkd_keras import _runs

    config = resolve_config("student", args.preset, args.config, _overrides(args))
    metrics = _runs.evaluate_file(args.model, config, args.split)
    _report.print_table({Path(args.model).stem: metrics})
    if args.output:
        _runs.write_json(Path(args.output), metrics)
    return 0


def _tune(args):
    from rkd_keras import _runs

    config = resolve_config("student", args.preset, args.config, _overrides(args))
    if not Path(args.teacher).is_file():
        raise FileNotFoundError(f"teacher file {args.teacher} does not exist.")
    folder = _run_folder(args, "tune")
    result = _runs.tune(config, folder, args.teacher, args.tuner, args.max_trials, verbose=int(not args.quiet))
    _report.print_table({"tuned": result})
    return 0


def _export(args):
    from rkd_keras import _runs

    _runs.export_file(args.model, args.output, overwrite=args.overwrite)
    print(f"exported the student to {args.output}; serve it with loaded = tf.saved_model.load(path); loaded.serve(images)")
    return 0


def _demo(args):
    from rkd_keras import _runs

    root = Path(args.runs_dir) / args.name
    base = dict(seed=args.seed, max_train_items=20_000, max_eval_items=4_000)
    if args.quick:
        base.update(epochs=1, steps_per_epoch=4, max_train_items=1_000, max_eval_items=400)
    if args.epochs:
        base["epochs"] = args.epochs
    configs = {"teacher": resolve_config("teacher", overrides=base)}
    for name, weights in DEMO_STUDENTS.items():
        configs[name] = resolve_config("student", overrides={**base, **weights})
    _runs.demo(root, configs, resume=args.resume, verbose=_verbose(args))
    return 0


_COMMANDS = {
    "demo": _demo,
    "train-teacher": _train_teacher,
    "distill": _distill,
    "evaluate": _evaluate,
    "tune": _tune,
    "export": _export,
}

if __name__ == "__main__":
    sys.exit(main())
