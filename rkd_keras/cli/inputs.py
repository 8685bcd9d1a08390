"""What each command is given, checked before the library loads: settings, model files, output paths.

A mistake here costs the user no TensorFlow start-up and leaves nothing on
disk. The checks that need the library (a model's input shape, the data, the
weights) come later, still before anything is written.
"""

import zipfile
from pathlib import Path

from rkd_keras import presets
from rkd_keras.checks import check_export_destination, check_export_format, check_writable_folder, repeated
from rkd_keras.cli.config import ConfigError, check_training, read_config_file, resolve_config
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


def _metric_learning(config, command):
    """`config`, unless it is a classification run, which this command does not train or evaluate."""
    if config.task != "metric":
        raise ConfigError(
            f"{command} is for metric learning (task: metric); classification runs come from "
            "`rkd-keras compare --task classification`."
        )
    return config


def _training(args, role):
    config = _metric_learning(resolve_config(role, args.preset, args.config, run_overrides(args)), args.command)
    check_training(config, role)
    _check_runs_dir(args)
    return {"config": config}


def _train_teacher(args):
    return _training(args, "teacher")


def _teacher_embeddings_file(path) -> Path:
    """A teacher-embeddings file that exists and whose suffix names its format (read, with its rows, later)."""
    from rkd_keras.embedding_files import check_suffix  # NumPy only: TensorFlow still unloaded

    path = Path(path)
    check_suffix(path)
    if path.is_dir():
        raise IsADirectoryError(f"teacher embeddings {path} is a folder; give the .parquet or .npz file.")
    if not path.exists():
        raise FileNotFoundError(f"teacher embeddings file {path} does not exist; write it with rkd-keras embed.")
    return path


def _distill(args):
    inputs = _training(args, "student")
    if args.teacher is not None:
        return {**inputs, "teacher": check_keras_file(args.teacher, "teacher"), "teacher_embeddings": None}
    if inputs["config"].augment:
        raise ConfigError(
            "--teacher-embeddings holds the teacher's embedding of each image as rkd-keras embed read it, but "
            "--augment trains on random crops and flips the teacher never embedded; add --no-augment."
        )
    return {**inputs, "teacher": None, "teacher_embeddings": _teacher_embeddings_file(args.teacher_embeddings)}


def _embed(args):
    from rkd_keras.embedding_files import check_suffix

    config = resolve_config("teacher", args.preset, args.config, run_overrides(args))
    output = Path(args.output)
    check_suffix(output)
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give the path of a .parquet or .npz file.")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} exists; pass --overwrite to replace it, or give another file.")
    check_writable_folder(output.parent)
    return {"config": config, "model": check_keras_file(args.model, "model"), "output": output}


def _tune(args):
    inputs = _training(args, "student")
    if inputs["config"].terms:
        raise ConfigError("tune searches distance_weight and angle_weight (RKD-D and RKD-A); leave terms out of its settings.")
    if inputs["config"].prototypical_weight:
        raise ConfigError(
            "tune searches distance_weight and angle_weight beside the triplet loss; it does not train with the "
            "prototypical loss: leave prototypical_weight at 0."
        )
    return {**inputs, "teacher": check_keras_file(args.teacher, "teacher")}


def _evaluate(args):
    config = _metric_learning(resolve_config("student", args.preset, args.config, run_overrides(args)), "evaluate")
    if args.split == "test" and hasattr(args, "validation_fraction"):
        raise ConfigError(
            "--validation-fraction chooses the images of --split validation; the test split does not read it. "
            "Leave it out, or add --split validation."
        )
    if args.output:
        _check_output_file(args.output)
    gallery_model = None if args.gallery_model is None else check_keras_file(args.gallery_model, "gallery model")
    return {"config": config, "model": check_keras_file(args.model, "model"), "gallery_model": gallery_model}


def _export(args):
    model = check_keras_file(args.model, "model")
    try:
        check_export_format(args.format, args.quantize)
    except ImportError as error:
        raise ValueError(str(error)) from None
    config = resolve_config("student", None, args.config)
    output = check_export_destination(args.output, args.format, overwrite=args.overwrite)
    return {"model": model, "output": output, "config": config}


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


# Settings each compare method sets itself: a --config file may not give them.
_METHOD_SETTINGS = ("task", "terms", "triplet_weight", "prototypical_weight", "distance_weight", "angle_weight", "seed")
# Model settings a student takes from the teacher: of the teacher's architecture, or only of its embedding.
_ARCHITECTURE = {
    "student": (),
    "teacher": ("backbone", "width", "embedding_dim"),
    "teacher_width": ("embedding_dim", "l2_normalize"),
}


def _compare(args):
    """Every run of the comparison: `{"configs": {seed: {"teacher": config, method: config, ...}}, ...}`.

    Settings: the task's preset (`presets.COMPARE`) ← `--quick` ← `--config`
    ← `--epochs`, `--train-classes`, `--dataset`, `--dataset-path` ← each
    method's terms and the seed. The few-shot task also returns its test
    protocol, `"few_shot"` (`presets.COMPARE["few_shot"]["evaluation"]`,
    fewer episodes with `--quick`); the others `None`.
    """
    recipe = presets.COMPARE[args.task]
    methods = args.methods or list(recipe["methods"])
    unknown = [name for name in methods if name not in recipe["methods"]]
    if unknown:
        raise ConfigError(
            f"unknown {args.task} methods {', '.join(unknown)}; choose among {', '.join(recipe['methods'])}."
        )
    for what, values in (("methods", methods), ("seeds", args.seeds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"--{what} lists {repeated(values)} more than once.")
    settings = {}
    if args.config:
        owned = sorted(set(read_config_file(args.config)) & set(_METHOD_SETTINGS))
        if owned:
            raise ConfigError(
                f"config file {args.config}: {', '.join(owned)} are set by compare itself (--task, each method's "
                "terms, --seeds); leave them out."
            )
    quick = recipe["quick"] if args.quick else {}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.train_classes is not None:
        settings["train_classes"] = args.train_classes
    for name in ("dataset", "dataset_path"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    configs = {}
    for seed in args.seeds:
        teacher = resolve_config("teacher", None, args.config, {**settings, "seed": seed}, base={**recipe["teacher"], **quick})
        if args.task == "few_shot":
            _check_episodes(teacher, recipe["evaluation"])
        check_training(teacher, "teacher")
        configs[seed] = {"teacher": teacher}
        for name in methods:
            method = recipe["methods"][name]
            overrides = {
                **settings, "seed": seed, "terms": method["terms"], "triplet_weight": method["triplet_weight"],
                "prototypical_weight": method["prototypical_weight"],
            }
            overrides.update({key: getattr(teacher, key) for key in _ARCHITECTURE[method["architecture"]]})
            config = resolve_config("student", None, args.config, overrides, base={**recipe["student"], **quick})
            check_training(config, "student")
            configs[seed][name] = config
    _check_runs_dir(args)
    few_shot = None
    if args.task == "few_shot":
        few_shot = {**recipe["evaluation"], **({"episodes": recipe["quick_episodes"]} if args.quick else {})}
    return {"configs": configs, "methods": methods, "few_shot": few_shot}


def _check_episodes(config, protocol):
    """Refuses data whose unseen classes cannot fill the few-shot episodes: too few classes (or, in an image
    folder, too few images of them), or test images capped by max_eval_items."""
    ways = max(ways for ways, _ in protocol["settings"])
    per_class = max(shots for _, shots in protocol["settings"]) + protocol["queries"]
    if config.max_eval_items is not None:
        raise ConfigError(
            f"compare --task few_shot draws its episodes from every test image ({per_class} of each class for "
            f"{per_class - protocol['queries']}-shot episodes); leave max_eval_items out (received {config.max_eval_items})."
        )
    train = set(config.train_classes if config.train_classes is not None else config.default_train_classes())
    test = [label for label in range(config.total_classes()) if label not in train]
    if config.dataset == "folder":
        counts = config.image_folder().counts()
        test = [label for label in test if counts[label] >= per_class]
    if len(test) < ways:
        dataset = f"the image folder {config.dataset_path}" if config.dataset == "folder" else config.dataset
        have = f"{len(test)} with {per_class} images or more" if config.dataset == "folder" else str(len(test))
        raise ConfigError(
            f"compare --task few_shot draws {ways}-way episodes from the classes unseen in training, and {dataset} has "
            f"{have} of them; use --dataset glyphs (200 unseen classes of 20 images), or data with at least {ways} "
            "unseen classes."
        )


_CHECKS = {
    "compare": _compare,
    "demo": _demo,
    "train-teacher": _train_teacher,
    "distill": _distill,
    "embed": _embed,
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

