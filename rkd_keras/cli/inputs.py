"""What each command is given, checked before the library loads: settings, model files, output paths.

A mistake here costs the user no TensorFlow start-up and leaves nothing on
disk. The checks that need the library (a model's input shape, the data, the
weights) come later, still before anything is written.
"""

import zipfile
from pathlib import Path

from rkd_keras import presets
from rkd_keras.checks import check_savedmodel_destination, check_writable_folder
from rkd_keras.cli.config import check_training, resolve_config
from rkd_keras.cli.parser import run_overrides


def check_keras_file(path, what: str) -> Path:
    """Refuses anything but a `.keras` archive, naming the file and what it is instead.

    Keras itself reports an empty, truncated or foreign file as "File not
    found".

    Raises:
        FileNotFoundError: there is no file at `path`.
        ValueError: a folder, or a file that is not a `.keras` archive.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist.")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a .keras model file.")
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        state = "is empty" if size == 0 else f"is not a .keras archive (not a zip file, {size:,} bytes; truncated?)"
        raise ValueError(f"{what} file {path} {state}; give a .keras file saved by Keras (e.g. runs/NAME/best.keras).")
    try:
        with zipfile.ZipFile(path) as archive:
            names, corrupt = set(archive.namelist()), archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{what} file {path} is not a readable .keras archive ({error}).") from error
    if corrupt is not None:
        raise ValueError(f"{what} file {path} is a damaged .keras archive: its entry {corrupt} is corrupt.")
    if "config.json" not in names:
        raise ValueError(f"{what} file {path} is a zip file but not a .keras model (it holds no config.json).")
    return path


def _check_output_file(path):
    """A file the command will write at the end: its folder must take it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; give the path of a JSON file.")
    check_writable_folder(path.parent)


def _check_runs_dir(args):
    runs = Path(args.runs_dir)
    if runs.exists() and not runs.is_dir():
        raise NotADirectoryError(f"--runs-dir {runs} is a file, not a folder.")


def _training(args, role):
    config = resolve_config(role, args.preset, args.config, run_overrides(args))
    check_training(config, role)
    _check_runs_dir(args)
    return {"config": config}


def _train_teacher(args):
    return _training(args, "teacher")


def _distill(args):
    return {**_training(args, "student"), "teacher": check_keras_file(args.teacher, "teacher")}


def _tune(args):
    return {**_training(args, "student"), "teacher": check_keras_file(args.teacher, "teacher")}


def _evaluate(args):
    config = resolve_config("student", args.preset, args.config, run_overrides(args))
    if args.output:
        _check_output_file(args.output)
    return {"config": config, "model": check_keras_file(args.model, "model")}


def _export(args):
    model = check_keras_file(args.model, "model")
    return {"model": model, "output": check_savedmodel_destination(args.output, overwrite=args.overwrite)}


def _demo(args):
    settings = {"seed": args.seed, **(presets.DEMO["quick"] if args.quick else {})}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    configs = {"teacher": resolve_config("teacher", overrides=settings)}
    for name, weights in presets.DEMO["students"].items():
        configs[name] = resolve_config("student", overrides={**settings, **weights})
    for name, config in configs.items():
        check_training(config, "teacher" if name == "teacher" else "student")
    _check_runs_dir(args)
    return {"configs": configs}


_CHECKS = {
    "demo": _demo,
    "train-teacher": _train_teacher,
    "distill": _distill,
    "evaluate": _evaluate,
    "tune": _tune,
    "export": _export,
}


def check_inputs(args) -> dict:
    """The command's checked inputs (resolved settings, model files, paths).

    Raises:
        ValueError (`ConfigError` for settings) or OSError: with a message
            that names the value and what to do.
    """
    return _CHECKS[args.command](args)

