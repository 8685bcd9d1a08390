"""Checks of argument values, shared by the library and the command line.

One message format everywhere: what the value must be, with its allowed range,
and what was received. Every value check raises `ValueError` (a value of the
wrong type is a value outside the allowed ones: `True` is not an integer here,
and 1.5 is not rounded to a K); `check_writable_folder` raises
`PermissionError`. Plain Python, no TensorFlow, so the command line checks its
flags before it loads the library.
"""

import importlib.util
import math
import numbers
import os
import re
import tempfile
from pathlib import Path

from rkd_keras.choices import (
    DATASET_ARGUMENTS,
    DATASET_TASKS,
    DATASETS,
    DISTILLATION_LOSSES,
    EXPORT_FORMATS,
    EXPORT_QUANTIZATIONS,
    LOSS_NAMES,
    TASK_LOSSES,
    TASKS,
)


def _bounds(low, high, low_open, high_open):
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _outside(value, low, high, low_open, high_open):
    return (
        (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    )


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """`value` as an `int` if it is an integer in `[low, high]` (`None`: no bound).

    Example:
    >>> check_int("epochs", 3, low=1)
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or _outside(value, low, high, False, False):
        raise ValueError(f"{name} must be an integer{_bounds(low, high, False, False)}, received {value!r}.")
    return int(value)


def check_bool(name: str, value) -> bool:
    """`value` if it is `True` or `False`: a string such as "no" or a number is not read as a truth value.

    Example:
    >>> check_bool("global_batch_relations", False)
    False
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, received {value!r}.")
    return value


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a `float` if it is a finite real number within the bounds.

    Args:
        name: The argument's name, for the message.
        value: The value to check; integers are accepted, booleans are not.
        low, high: Bounds, `None` for none.
        low_open, high_open: Exclude the bound itself.

    Example:
    >>> check_number("learning_rate", 1e-3, low=0, low_open=True)
    0.001
    """
    bounds = _bounds(low, high, low_open, high_open)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or _outside(value, low, high, low_open, high_open)
    ):
        raise ValueError(f"{name} must be a finite number{bounds}, received {value!r}.")
    return float(value)


def repeated(values) -> list:
    """The values that `values` holds more than once, sorted.

    Example:
    >>> repeated([3, 1, 3, 2, 1])
    [1, 3]
    """
    return sorted({value for value in values if values.count(value) > 1})


def check_classes(what: str, classes, *, names: bool = False) -> list:
    """`classes` as a list: at least one class, each an integer label ≥ 0 (or, with `names`, a class name), none twice.

    Which labels a dataset has is its loader's to check; this is the rule
    every list of classes keeps (`load_dataset(classes=...)`, an image
    folder's classes, the command line's `train_classes`).

    Args:
        what: How the message names the list (e.g. `"classes"`).
        classes: The list to check.
        names: Also accept class names (strings): an image folder's.

    Example:
    >>> check_classes("classes", [3, 0, 1])
    [3, 0, 1]
    """
    if names and isinstance(classes, (str, bytes)):
        classes = [classes]
    kind = "class names or integer labels" if names else "integer class labels"
    try:
        given = list(classes)
    except TypeError:
        raise ValueError(f"{what} must be a list of {kind}, received {classes!r}.") from None
    if not given:
        raise ValueError(f"{what} must hold at least one class, received none.")
    for label in given:
        if not (names and isinstance(label, str)):
            check_int(f"each of {what}", label, low=0)
    if repeated(given):
        raise ValueError(f"{what} lists {repeated(given)} more than once; give each class once.")
    return given


def check_choice(name: str, value, choices):
    """`value` if it is one of `choices`.

    Example:
    >>> check_choice("metric", "cosine", ("euclidean", "cosine"))
    'cosine'
    """
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; received {value!r}.")
    return value


def check_loss_name(loss) -> str:
    """`loss` if it names a loss of `rkd_keras.losses.LOSSES`.

    Example:
    >>> check_loss_name("rkd_angle")
    'rkd_angle'
    """
    if not isinstance(loss, str) or loss not in LOSS_NAMES:
        raise ValueError(
            f"Unknown loss {loss!r}; choose a distillation loss ({', '.join(DISTILLATION_LOSSES)}) or a loss of "
            f"labels and embeddings ({', '.join(TASK_LOSSES)})."
        )
    return loss


# The keys a Distiller logs besides its terms' names.
RESERVED_TERM_NAMES = ("loss", "task_loss")


def check_term_name(name) -> str:
    """`name` if a term may be logged under it: a non-empty string, not a key the Distiller's logs use already.

    Example:
    >>> check_term_name("rkd_a_pool")
    'rkd_a_pool'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A term's name must be a non-empty string, received {name!r}.")
    if name in RESERVED_TERM_NAMES:
        raise ValueError(f"A term cannot be named {name!r}: the logs use that key. Give it another name.")
    if name.startswith("val_"):
        # fit logs every value of the validation data under "val_" + its key.
        raise ValueError(
            f"A term cannot be named {name!r}: fit logs the validation value of a term named {name[4:]!r} under "
            f"that key. Give it a name without the 'val_' prefix, e.g. '{name[4:]}_term'."
        )
    return name


def check_term_names(names) -> list:
    """`names` if no two terms share one: each term is logged under its name.

    Example:
    >>> check_term_names(["hinton_kd", "rkd_angle"])
    ['hinton_kd', 'rkd_angle']
    """
    names = list(names)
    if repeated(names):
        shared = " and ".join(map(repr, repeated(names)))
        raise ValueError(
            f"Two terms are named {shared}, and each term is logged under its name. Give them distinct names, "
            f"e.g. '{repeated(names)[0]}_pool'."
        )
    return names


def check_term_weight(name: str, weight) -> float:
    """The weight of term `name` as a float, if it is finite and ≥ 0 (0 turns the term off).

    Example:
    >>> check_term_weight("rkd_angle", 2)
    2.0
    """
    return check_number(f"The weight of term {name!r}", weight, low=0)


def check_term_layer(argument: str, layer):
    """`layer` if it is a layer name (a non-empty string) or `None` (the model's output).

    Args:
        argument: `"teacher_layer"` or `"student_layer"`, for the message.
        layer: The value to check.
    """
    if layer is not None and (not isinstance(layer, str) or not layer):
        raise ValueError(
            f"{argument} must be a layer name (a non-empty string), or None (null in a settings file) for the "
            f"model's output; received {layer!r}."
        )
    return layer


def check_task(name: str, task: str) -> str:
    """`task` if dataset `name` serves it; else a `ValueError` naming the datasets that do.

    Example:
    >>> check_task("cifar10", "classification")
    'classification'
    """
    check_choice("dataset", name, DATASETS)
    check_choice("task", task, TASKS)
    if task not in DATASET_TASKS[name]:
        serving = [other for other in DATASETS if task in DATASET_TASKS[other]]
        raise ValueError(
            f"{name} serves {' and '.join(DATASET_TASKS[name])} only, not {task}; for {task} choose one of "
            f"{', '.join(serving)}."
        )
    return task


def check_dataset_arguments(name: str, given, *, spell=lambda argument: argument) -> None:
    """Refuses a loader argument (`choices.DATASET_ARGUMENTS`) that dataset `name` does not read.

    Args:
        name: The dataset.
        given: The names of the arguments given (set, not None).
        spell: How a message names an argument: the CLI names its flag.
    """
    for argument in given:
        readers = DATASET_ARGUMENTS[argument]
        if name not in readers:
            raise ValueError(
                f"{spell(argument)} is read only by {', '.join(readers)}; {name} does not read it, so it would be "
                f"ignored. Leave {spell(argument)} out, or choose a dataset that reads it."
            )


def check_writable_folder(folder) -> None:
    """Raises an `OSError` naming `folder` unless a file can be created in it.

    Tries for real (a temporary file, removed at once): permission bits do
    not tell about read-only file systems, or about root.

    Raises:
        FileNotFoundError: `folder` is not an existing folder.
        PermissionError: no file can be created in it.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder {folder} does not exist; create it first.")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rkd-keras-write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write in {folder}: {error.strerror or error}.") from error


def check_savedmodel_destination(path, *, overwrite: bool = False) -> Path:
    """Checks that a SavedModel can be written at `path`, before any work is spent.

    The parent folder must exist and be writable. An existing `path` is
    replaced only if it is a SavedModel folder (it holds `saved_model.pb`)
    and only with `overwrite=True`: anything else there is kept, and refused
    as such whether or not `overwrite` is given.

    Args:
        path: Folder to create.
        overwrite: Allow replacing an existing SavedModel at `path`.

    Returns:
        `path` as a `Path`.

    Raises:
        FileExistsError: something is at `path` and may not be replaced.
        FileNotFoundError: the parent folder does not exist.
        PermissionError: the parent folder is not writable.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        # What is not a SavedModel is never replaced: the first message says so, rather
        # than suggest an overwrite that would be refused next.
        if not (path.is_dir() and (path / "saved_model.pb").is_file()):
            raise FileExistsError(
                f"{path} exists and is not a SavedModel folder (no saved_model.pb), so it is not replaced "
                "even with overwrite; choose another path, or remove it yourself."
            )
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot export to {path}: the folder {path.parent} does not exist; create it first.")
    check_writable_folder(path.parent)
    return path


def check_export_format(format, quantize=None):
    """Refuses an unknown export format, a quantization it does not take, or a runtime that is not installed."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, received {format!r}.")
    if quantize is not None:
        if quantize not in EXPORT_QUANTIZATIONS:
            raise ValueError(f"quantize must be one of {', '.join(EXPORT_QUANTIZATIONS)} or None, received {quantize!r}.")
        if format == "openvino":
            raise ValueError(
                f"quantize={quantize!r} is not offered for format='openvino': Keras's OpenVINO exporter writes a "
                "float32 model and quantizes nothing; OpenVINO quantizes with NNCF (nncf.quantize or "
                "nncf.compress_weights on the exported model), which rkd_keras does not run."
            )
        if format != "litert":
            raise ValueError(f"quantize={quantize!r} applies to format='litert' only, not {format!r}.")
    _, packages, extra, _ = EXPORT_FORMATS[format]
    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        raise ImportError(
            f"exporting to {format} needs {', '.join(missing)}, which is not installed: "
            f"pip install 'rkd-keras[{extra}]'."
        )


def artifact_format(path) -> str:
    """The format of an exported artifact, from what is at `path` (a SavedModel folder) or its suffix."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "tf_saved_model"
        raise ValueError(f"{path} is a folder without saved_model.pb, so no SavedModel.")
    for format, (suffix, _, _, _) in EXPORT_FORMATS.items():
        if suffix is not None and path.suffix.lower() == suffix:
            return format
    raise ValueError(f"{path} is no exported student: a SavedModel folder, a .onnx, .tflite or .xml file.")


def artifact_files(path, format) -> list[Path]:
    """The paths an artifact of `format` at `path` consists of, `path` first.

    OpenVINO IR is two files: the `.xml` graph and, beside it, the `.bin`
    weights that OpenVINO reads by the same name. Every other format is `path`.
    """
    path = Path(path)
    return [path, path.with_suffix(".bin")] if format == "openvino" else [path]


def _is_artifact(path, format) -> bool:
    """Whether the file at `path` is an artifact of `format` (what overwrite may replace)."""
    if not path.is_file():
        return False
    if format == "litert":
        return path.read_bytes()[4:8] == b"TFL3"  # the FlatBuffer file identifier of TFLite models
    if format == "openvino":
        # An IR's root element is <net> (OpenVINO's IR format); its head says so without parsing the file.
        with path.open("rb") as file:
            head = file.read(512)
        return re.match(rb"\s*(<\?xml[^>]*\?>\s*)?<net[\s>]", head) is not None
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError and others for what is not an ONNX model
        return False
    return True


def check_export_destination(path, format="tf_saved_model", *, overwrite: bool = False) -> Path:
    """Checks that an artifact of `format` can be written at `path`, before any work is spent.

    A SavedModel as `check_savedmodel_destination`. A file format needs its
    suffix (`.onnx`, `.tflite`, `.xml`); an existing file is replaced only with
    `overwrite=True` and only if it is an artifact of the same format. For
    OpenVINO that holds for both files: the `.bin` beside the `.xml` is
    replaced only as the weights of an OpenVINO model at the `.xml`.
    """
    check_export_format(format)
    suffix = EXPORT_FORMATS[format][0]
    if suffix is None:
        return check_savedmodel_destination(path, overwrite=overwrite)
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{format} is written to a {suffix} file, but {path} ends in {path.suffix or 'no suffix'}.")
    taken = False
    for file in artifact_files(path, format):
        if not (file.exists() or file.is_symlink()):
            continue
        if file == path:
            mine = not path.is_symlink() and _is_artifact(path, format)
            what = EXPORT_FORMATS[format][3]
        else:  # the weights beside an OpenVINO model: its own only if `path` (checked first) is that model
            mine = taken and file.is_file() and not file.is_symlink()
            what = f"the weights of an OpenVINO model at {path.name}"
        if not mine:
            raise FileExistsError(
                f"{file} exists and is not {what}, so it is not replaced even with overwrite; "
                "choose another path, or remove it yourself."
            )
        taken = True
    if taken and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot export to {path}: the folder {path.parent} does not exist; create it first.")
    check_writable_folder(path.parent)
    return path


TERM_KEYS = ("loss", "weight", "teacher_layer", "student_layer", "name", "options", "warmup_epochs")


def check_term_specs(name: str, specs) -> list:
    """Term specs (as `presets.term` writes them, or a config file's `terms`) checked and completed.

    The rules are those `rkd_keras.Term` and the `Distiller` check terms by.

    Plain Python: the command line checks a config file's `terms` with it
    before TensorFlow loads, and refuses a mistake with the library's own
    message (each rule is a function of this module), after the spec's place
    (`terms[0]: ...`). A spec may leave out everything but `loss`, which
    must be a distillation loss (`choices.DISTILLATION_LOSSES`).

    Args:
        name: How messages name the list (e.g. `"terms"`).
        specs: A list of mappings with the keys of `TERM_KEYS`.

    Returns:
        The specs with every key, `name` defaulting to the loss's name.

    Raises:
        ValueError: naming the spec and what is wrong with it.
    """
    if not isinstance(specs, list):
        raise ValueError(f"{name} must be a list of term specs, received {specs!r}.")
    checked = [check_term_spec(f"{name}[{index}]", spec) for index, spec in enumerate(specs)]
    check_term_names(spec["name"] for spec in checked)
    return checked


def check_term_spec(where: str, spec) -> dict:
    """One term spec checked and completed (`check_term_specs`); messages start with `where`."""
    if not isinstance(spec, dict) or "loss" not in spec:
        raise ValueError(f"{where} must be a mapping with a loss (keys {', '.join(TERM_KEYS)}), received {spec!r}.")
    unknown = sorted(set(spec) - set(TERM_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {', '.join(unknown)}; known keys: {', '.join(TERM_KEYS)}.")
    try:
        loss = check_loss_name(spec["loss"])
        if loss not in DISTILLATION_LOSSES:
            raise ValueError(
                f"{loss} is a loss of labels and embeddings, not of the teacher and the student, so it is no "
                f"distillation term; choose one of {', '.join(DISTILLATION_LOSSES)}."
            )
        term_name = check_term_name(loss if spec.get("name") is None else spec["name"])
        weight = check_term_weight(term_name, spec.get("weight", 1.0))
        layers = {key: check_term_layer(key, spec.get(key)) for key in ("teacher_layer", "student_layer")}
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{where} options must be a mapping of the loss's arguments, received {options!r}.")
    warmup = check_int(f"{where} warmup_epochs", spec.get("warmup_epochs", 0), low=0)
    return {
        "loss": loss, "weight": weight, **layers, "name": term_name, "options": dict(options),
        **({"warmup_epochs": warmup} if warmup else {}),
    }
