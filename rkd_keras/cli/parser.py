"""The flags of `rkd-keras` and its subcommands. No TensorFlow here: `--help` and typos return at once."""

import argparse
import dataclasses
import json

from rkd_keras import presets
from rkd_keras.checks import check_int
from rkd_keras.choices import DATASETS, EXPORT_FORMATS, EXPORT_QUANTIZATIONS
from rkd_keras.cli.config import RunConfig, class_label, field_kind

PROG = "rkd-keras"
TUNERS = ("random", "bayesian", "hyperband")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not the usage block: what is wrong and where to look.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ranged_int(low, high=None):
    def parse(text):
        try:
            return check_int("the value", int(text), low=low, high=high)
        except ValueError:
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, received {text!r}") from None

    parse.__name__ = "integer"
    return parse


def _run_name(text):
    """A run folder's name: one folder, inside --runs-dir."""
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"must be a folder name without '/', received {text!r}")
    return text


def _or_none(kind):
    def parse(text):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _shown(value):
    return "none" if value is None else json.dumps(value) if isinstance(value, (list, bool)) else str(value)


# The settings `evaluate` reads: the data. The model comes trained from --model.
EVALUATE_SETTINGS = (
    "dataset", "train_classes", "image_size", "resize_size", "channels", "validation_fraction", "max_eval_items",
    "dataset_path", "data_dir", "manual_dir", "download",
)


# The settings `embed` reads: the images and how they are prepared. The model comes trained from --model.
EMBED_SETTINGS = (
    "dataset", "train_classes", "image_size", "resize_size", "channels", "dataset_path", "data_dir", "manual_dir",
    "download",
)


def _flag(name):
    return "--" + name.replace("_", "-")


class _NotRead(argparse.Action):
    """A run setting the command does not read: refused, naming the flag, rather than ignored."""

    def __init__(self, option_strings, dest, reads, purpose="measures", **kwargs):
        self.reads, self.purpose = reads, purpose
        super().__init__(option_strings, dest, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        command = parser.prog.split()[-1]
        parser.error(
            f"{command} does not read {option_string}: it {self.purpose} the --model as it was trained, on the data "
            f"that {', '.join(map(_flag, self.reads))} choose; leave {option_string} out"
        )


class _Refused(argparse.Action):
    """A flag that a command refuses with its reason (one line), e.g. compare's --teacher-embeddings."""

    def __init__(self, option_strings, dest, reason, **kwargs):
        self.reason = reason
        super().__init__(option_strings, dest, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{parser.prog.split()[-1]} does not take {option_string}: {self.reason}")


def _add_run_flags(parser, role, folder_name=None, reads=None, purpose="measures"):
    """A flag per RunConfig setting, whose help shows the role's default and choices.

    With `folder_name`, also the run-folder flags (the command writes a run folder).
    With `reads`, only those settings' flags: the others are refused, naming the flag.
    """
    defaults = presets.get("demo", role)
    what = "run settings" if reads is None else "data settings, the only flags read (a --config file may hold others)"
    flags = parser.add_argument_group(
        f"{what} (defaults: the demo's {role}; --preset, then --config, then these flags override them)"
    )
    flags.add_argument("--preset", choices=sorted(presets.PRESETS), help=f"the paper's {role} recipe for a dataset")
    flags.add_argument("--config", metavar="FILE", help="JSON or YAML file of the settings below (same names, with _)")
    for field in dataclasses.fields(RunConfig):
        if not field.metadata.get("flag", True):
            continue  # config files only
        flag = _flag(field.name)
        if reads is not None and field.name not in reads:
            negative = ["--no-" + flag[2:]] if field_kind(field)[0] is bool else []
            parser.add_argument(flag, *negative, action=_NotRead, reads=reads, purpose=purpose)
            continue
        default = defaults.get(field.name, field.default)
        text = f"{field.metadata['help']} (default: {_shown(default)})"
        kind, optional = field_kind(field)
        # SUPPRESS: only flags given on the command line override the preset and config file.
        if kind is bool:
            flags.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif kind is list:
            metavar = field.metadata.get("metavar", "EPOCH")
            item = field.metadata.get("item", int)
            flags.add_argument(flag, type=item, nargs="*", default=argparse.SUPPRESS, metavar=metavar, help=text)
        elif "choices" in field.metadata:
            flags.add_argument(
                flag, type=kind, choices=field.metadata["choices"], default=argparse.SUPPRESS, help=text
            )
        else:
            parse = _or_none(kind) if optional else kind
            metavar = {int: "N", float: "X"}.get(kind, "NONE|IMAGENET|FILE" if field.name == "weights" else "PATH")
            flags.add_argument(flag, type=parse, default=argparse.SUPPRESS, metavar=metavar, help=text)
    if folder_name:
        _add_folder_flags(parser, folder_name)


def _add_folder_flags(parser, default_name):
    """--name (default `default_name`; None: set by the command), --runs-dir, --resume, --quiet."""
    folder = parser.add_argument_group("run folder")
    shown = default_name or "compare-TASK"
    folder.add_argument("--name", type=_run_name, default=default_name, help=f"run folder name (default: {shown})")
    folder.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
    folder.add_argument("--resume", action="store_true", help="continue the interrupted run of this name")
    folder.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The `rkd-keras` parser with its eight subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Relational Knowledge Distillation (Park et al., CVPR 2019): train, distil, evaluate, export.",
        epilog="TensorFlow's start-up logs are hidden; TF_CPP_MIN_LOG_LEVEL=0 shows them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    demo = commands.add_parser("demo", help="offline demo on Fashion-MNIST: teacher, triplet student, RKD students")
    demo.add_argument("--quick", action="store_true", help="a few steps of each model (about 2 minutes)")
    demo.add_argument("--seed", type=_ranged_int(0, 2**32 - 1), default=0, help="seed of every model (default: 0)")
    demo.add_argument(
        "--epochs", type=_ranged_int(1), help=f"epochs of every model (default: {presets.DEMO['teacher']['epochs']})"
    )
    _add_folder_flags(demo, "demo")

    compare = commands.add_parser(
        "compare",
        help="train a teacher per seed and every distillation method's student from it; table and report",
        description="The paper's comparison on the offline default (Fashion-MNIST, the demo's small CNNs): metric "
        "learning (Recall@K, MAP@R on unseen classes), classification (accuracy) or few-shot (prototypical networks on glyphs, "
        "accuracy over episodes of unseen classes). Each seed trains one teacher "
        "and, from it, one student per method, each in its own resumable run folder under runs/NAME/seedS/.",
    )
    compare.add_argument(
        "--task", choices=tuple(presets.COMPARE), default="metric",
        help="(default: metric; few_shot: prototypical networks on glyphs, 5- and 20-way 1- and 5-shot accuracy)",
    )
    compare.add_argument(
        "--methods", nargs="+", metavar="METHOD",
        help="methods to compare (default: all of the task's; metric: "
        + ", ".join(presets.COMPARE["metric"]["methods"]) + "; classification: "
        + ", ".join(presets.COMPARE["classification"]["methods"]) + "; few_shot: "
        + ", ".join(presets.COMPARE["few_shot"]["methods"]) + ")",
    )
    compare.add_argument(
        "--seeds", nargs="+", type=_ranged_int(0, 2**32 - 1), default=[0, 1, 2], metavar="SEED", help="(default: 0 1 2)"
    )
    compare.add_argument("--quick", action="store_true", help="every method for a few steps (checks that it all runs)")
    compare.add_argument("--epochs", type=_ranged_int(1), help="epochs of every run (default: the task's preset)")
    compare.add_argument(
        "--train-classes", nargs="+", type=class_label, metavar="CLASS",
        help="metric learning: the labels (a folder's: or class names) that train; the others are the unseen test "
        "classes (default: 0 1 2 3 4; a folder's: the first half of its sorted classes)",
    )
    compare.add_argument("--dataset", choices=DATASETS, help="dataset of every run (default: the task's preset's)")
    compare.add_argument(
        "--dataset-path", metavar="DIR",
        help="--dataset folder: the folder of one subfolder of images per class (fashion_mnist: of its *-ubyte.gz files)",
    )
    compare.add_argument(
        "--config", metavar="FILE", help="JSON or YAML file of run settings for every run (e.g. dataset, image_size)"
    )
    compare.add_argument(
        "--teacher-embeddings", action=_Refused,
        reason="compare trains its own teacher for each seed and distils every method from it, and some methods read "
        "the teacher's layers, which a file of embeddings does not hold; distil from the file with "
        "rkd-keras distill --teacher-embeddings FILE",
    )
    _add_folder_flags(compare, None)

    teacher = commands.add_parser("train-teacher", help="train an embedding teacher with the triplet loss")
    _add_run_flags(teacher, "teacher", folder_name="teacher")

    distill = commands.add_parser("distill", help="train a student from a frozen teacher (or its embeddings) with RKD")
    source = distill.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", help="teacher .keras file (e.g. runs/NAME/best.keras)")
    source.add_argument(
        "--teacher-embeddings", metavar="FILE",
        help="instead of --teacher: a .parquet or .npz file of the teacher's embedding of every training image "
        "(rkd-keras embed, or any framework; the terms compare the teacher's output only)",
    )
    _add_run_flags(distill, "student", folder_name="student")

    evaluate = commands.add_parser("evaluate", help="Recall@K, MAP@R and R-precision of a model")
    evaluate.add_argument("--model", required=True, help=".keras file of an embedding model or a Distiller")
    evaluate.add_argument("--split", default="test", choices=["test", "validation"], help="(default: test)")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    evaluate.add_argument(
        "--gallery-model",
        help=".keras file of the model that embeds the gallery (e.g. the teacher; same width as --model): "
        "adds the asymmetric protocol's asym_recall_at_K, asym_map_at_r and asym_r_precision",
    )
    _add_run_flags(evaluate, "student", reads=EVALUATE_SETTINGS)

    embed = commands.add_parser(
        "embed", help="write a model's embedding of every image of a dataset to a Parquet or .npz file",
        description="The file distill --teacher-embeddings reads: for each image its path (for a folder relative to "
        "it, e.g. coat/0001.png; for a named dataset SPLIT/INDEX, see rkd_keras.image_paths) and its embedding. "
        "Parquet: columns path and embedding (a list of floats), in row groups; .npz: arrays paths and embeddings. "
        "Written under a temporary name and renamed when complete.",
    )
    embed.add_argument("--model", required=True, help=".keras file of the teacher (e.g. runs/NAME/best.keras)")
    embed.add_argument("--output", required=True, metavar="FILE", help="the .parquet or .npz file to write")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    embed.add_argument("--batch-size", type=_ranged_int(1), default=256, help="images per model call (default: 256)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_flags(embed, "teacher", reads=EMBED_SETTINGS, purpose="embeds with")

    tune = commands.add_parser(
        "tune", help="search the RKD loss weights and learning rate with keras-tuner (weights flags are searched)"
    )
    tune.add_argument("--teacher", required=True, help="teacher .keras file (e.g. runs/NAME/best.keras)")
    tune.add_argument("--tuner", default="random", choices=TUNERS, help="(default: random)")
    tune.add_argument("--max-trials", type=_ranged_int(1), default=10, help="trials, random and bayesian (default: 10)")
    _add_run_flags(tune, "student", folder_name="tune")

    export = commands.add_parser(
        "export", help="export a student (TF SavedModel, ONNX, LiteRT or OpenVINO) and check it in its own runtime",
        description="Writes the student alone through Keras's model.export, then runs the artifact in its own "
        "runtime (TensorFlow, onnxruntime, the LiteRT interpreter, OpenVINO) on test images and compares it with "
        "the .keras student: above the tolerance the artifact is removed and the command exits 1.",
    )
    export.add_argument("--model", required=True, help=".keras file of a student or a Distiller")
    export.add_argument(
        "--output", required=True,
        help="folder (tf_saved_model) or file (.onnx, .tflite, .xml beside its .bin) to create; its parent must exist",
    )
    export.add_argument("--format", default="tf_saved_model", choices=list(EXPORT_FORMATS), help="(default: tf_saved_model)")
    export.add_argument(
        "--quantize", choices=EXPORT_QUANTIZATIONS,
        help="litert only: float16 weights, or int8 (calibrated on training images); reports Recall@1 of both",
    )
    export.add_argument(
        "--config", metavar="FILE",
        help="the run's settings (e.g. runs/NAME/config.json), for the images that check the artifact and "
        "calibrate int8 (default: the demo's Fashion-MNIST settings)",
    )
    export.add_argument(
        "--check-items", type=_ranged_int(1), default=64, help="test images the artifact is checked on (default: 64)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing artifact of that format (only those)")
    return parser


def run_overrides(args) -> dict:
    """The settings given as flags."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(RunConfig) if hasattr(args, field.name)}
