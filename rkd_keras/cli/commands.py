"""The eight commands of `rkd-keras`, each from its checked inputs to its run folder and printed table."""

import datetime
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from rkd_keras import presets, retrieval
from rkd_keras.cli import report, training
from rkd_keras.checks import artifact_files, artifact_format
from rkd_keras.cli.runs import RunFailed, RunFolder, read_history, write_json
from rkd_keras.data import DatasetNotAvailableError, materialize
from rkd_keras.distiller import Distiller
from rkd_keras.embedding_files import write_embeddings
from rkd_keras.export import (
    EXPORT_TOLERANCE, QUANTIZED_TOLERANCE, ExportMismatchError, check_export, export_student, run_artifact,
)
from rkd_keras.models import WeightsNotAvailableError

# Errors that mean a bad input or a missing resource: one line, exit status 2.
# Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, DatasetNotAvailableError, WeightsNotAvailableError)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


def _verbose(args):
    """Keras progress bars on a terminal, one line per epoch in a log file, none with --quiet."""
    return 0 if args.quiet else 1 if sys.stdout.isatty() else 2


def _single_run(args, inputs):
    """The run folder of train-teacher, distill or tune, and its decision: the settings and the teacher to run with.

    Every check that can refuse the run (its data, weights, the teacher's
    fit to the data) runs in the decision, before the folder's lock is
    taken: a refused command writes nothing, not even the lock file.
    """
    folder = RunFolder(Path(args.runs_dir) / args.name)

    def decide():
        config = folder.prepare(inputs["config"], args.resume)
        teacher = training.load_model_file(inputs["teacher"], "teacher") if inputs.get("teacher") else None
        if folder.status() != "complete":
            training.check_run(config, teacher, inputs.get("teacher_embeddings"))
        return config, teacher

    return folder, decide


def _train_teacher(args, inputs):
    folder, decide = _single_run(args, inputs)
    with folder.claimed(decide) as (config, _):
        report.print_table({"teacher": training.train(config, folder, verbose=_verbose(args))})


def _distill(args, inputs):
    folder, decide = _single_run(args, inputs)
    with folder.claimed(decide) as (config, teacher):
        metrics = training.train(
            config, folder, teacher, verbose=_verbose(args), teacher_embeddings=inputs.get("teacher_embeddings")
        )
        report.print_table({"student": metrics})


def _embed(args, inputs):
    """Every image's embedding by --model, into --output (Parquet or .npz), with a progress bar; atomic."""
    import keras

    model = training.load_model_file(inputs["model"], "model")
    if isinstance(model, Distiller):
        raise ValueError(
            f"the model {args.model} is a Distiller; give the .keras file of the model to embed with (the "
            "teacher's run folder's best.keras)."
        )
    config = inputs["config"]
    training.check_fits_data(model, config, "model")
    sources = training.embedding_sources(config)
    total = sum(len(paths) for _, paths in sources)
    progress = None if args.quiet else keras.utils.Progbar(total, unit_name="image")

    def rows():
        for images, paths in sources:
            start = 0
            for batch, _ in images.batch(args.batch_size):
                embeddings = np.asarray(model.predict_on_batch(batch))
                yield paths[start : start + len(embeddings)], embeddings
                start += len(embeddings)
                if progress is not None:
                    progress.add(len(embeddings))

    count = write_embeddings(inputs["output"], rows())
    width = int(model.outputs[0].shape[-1])
    print(f"wrote the embeddings (width {width}) of {count} images to {inputs['output']}")


def _tune(args, inputs):
    folder, decide = _single_run(args, inputs)
    with folder.claimed(decide) as (config, teacher):
        result = training.tune(config, folder, teacher, args.tuner, args.max_trials, verbose=int(not args.quiet))
        report.print_table({"tuned": result})


def _evaluate(args, inputs):
    model = training.load_model_file(inputs["model"], "model")
    model = getattr(model, "student", model)
    training.check_embedding_model(model, args.model)
    training.check_fits_data(model, inputs["config"], "model")
    gallery_model = None
    if inputs["gallery_model"] is not None:
        gallery_model = training.load_model_file(inputs["gallery_model"], "gallery model")
        gallery_model = getattr(gallery_model, "student", gallery_model)
        training.check_embedding_model(gallery_model, args.gallery_model)
        training.check_fits_data(gallery_model, inputs["config"], "gallery model")
    metrics = training.evaluate(model, inputs["config"], args.split, gallery_model=gallery_model)
    report.print_table({Path(args.model).stem: metrics})
    if args.output:
        write_json(args.output, metrics)


_SERVE = {
    "tf_saved_model": "loaded = tf.saved_model.load(path); loaded.serve(images)",
    "onnx": "onnxruntime.InferenceSession(path).run(None, {'input': images})",
    "litert": "ai_edge_litert.interpreter.Interpreter(model_path=path)",
    "openvino": "openvino.Core().compile_model(path, 'CPU')(images)[0]",
}


def _export(args, inputs):
    model = training.load_model_file(inputs["model"], "model")
    student = getattr(model, "student", model)
    config = inputs["config"]
    try:
        training.check_fits_data(student, config, "model")
        images = None
    except ValueError as error:
        if args.quantize is not None:
            raise ValueError(f"{error} --quantize measures Recall@1 on the run's test images: give --config "
                             "runs/NAME/config.json of the run that trained the model.") from None
        images = False  # the check runs on seeded random inputs of the model's shape
    if images is None:
        test_images, test_labels = materialize(training.data(config, "test").unbatch(), "the export check")
        images = test_images[: args.check_items]
    representative = None
    if args.quantize == "int8":
        print("[export] reading 256 training images to calibrate int8 ...", flush=True)
        representative = materialize(training.data(config, "train").take(256), "int8 calibration")[0]
    what = args.format + (f" ({args.quantize})" if args.quantize else "")
    print(f"[export] writing {what} to {args.output} ...", flush=True)
    path = export_student(model, inputs["output"], format=args.format, overwrite=args.overwrite,
                          quantize=args.quantize, representative_data=representative)
    tolerance = QUANTIZED_TOLERANCE[args.quantize] if args.quantize else EXPORT_TOLERANCE
    source = "seeded random inputs (the model does not take the --config data's images)" if images is False \
        else f"{len(images)} test images"
    try:
        result = check_export(student, path, None if images is False else images, rtol=tolerance)
    except ExportMismatchError as error:
        _remove_artifact(path)
        raise ArtifactMismatch(f"{error} The artifact was removed.") from None
    print(
        f"[export] checked in its own runtime on {source}: largest difference {result['max_abs_difference']:.3g}, "
        f"{result['relative_difference']:.2g} of the largest output (tolerance {tolerance:g})", flush=True
    )
    if args.quantize:
        embeddings = run_artifact(path, test_images)
        quantized = retrieval.recall_at_k(embeddings, test_labels)[1]
        float_recall = training.evaluate(student, config)["recall_at_1"]
        print(
            f"[export] Recall@1 on the {len(test_labels)} test images: {100 * float_recall:.2f} float32, "
            f"{100 * quantized:.2f} {args.quantize}; {_size(student_bytes(student))} float32 weights, "
            f"{_size(path.stat().st_size)} file", flush=True
        )
    print(f"exported the student to {path}; serve it with {_SERVE[args.format]}")


class ArtifactMismatch(RuntimeError):
    """The exported artifact does not give the student's outputs: exit 1 (the export failed, not the input)."""


def _remove_artifact(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        for file in artifact_files(path, artifact_format(path)):
            file.unlink(missing_ok=True)


def student_bytes(model) -> int:
    return sum(int(np.prod(weight.shape)) * 4 for weight in model.weights)


def _size(count):
    return f"{count / 1e6:.2f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"


def _what_it_learns(name, config):
    if name == "teacher":
        return "the teacher, triplet loss"
    if not (config.distance_weight or config.angle_weight):
        return f"{name} student, triplet loss alone (the baseline)"
    terms = {(True, False): "RKD-D", (False, True): "RKD-A", (True, True): "RKD-DA"}
    return f"{name} student, {terms[bool(config.distance_weight), bool(config.angle_weight)]} from the teacher"


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _minutes(seconds):
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _demo(args, inputs):
    """Teacher, triplet-only student and RKD students on Fashion-MNIST, side by side."""
    top = RunFolder(Path(args.runs_dir) / args.name, kind="demo")
    with top.claimed(lambda: _prepare_demo(args, inputs, top)) as (configs, stages):
        _run_demo(args, top, configs, stages)


def _prepare_demo(args, inputs, top):
    """The demo's checks and its folders' decisions (nothing written): the settings and folder of each stage."""
    configs = dict(inputs["configs"])
    top.prepare(None, args.resume)
    training.check_available(configs.values())
    stages = {name: RunFolder(top.path / name) for name in configs}
    if not top.restart:
        # Every stage decides now, so a refused resume stops before anything trains.
        for name, stage in stages.items():
            configs[name] = stage.prepare(configs[name], resume=stage.path.exists())
    return configs, stages


def _run_demo(args, top, configs, stages):
    root = top.path
    results, teacher, start = {}, None, time.monotonic()
    with top.running():
        for index, (name, config) in enumerate(configs.items(), 1):
            place = f"[{index}/{len(configs)}]"
            print(
                f"\n{place} {_what_it_learns(name, config)}: {_count(config.epochs, 'epoch')} of "
                f"{_count(config.steps_per_epoch, 'step')} ({_minutes(time.monotonic() - start)} elapsed)",
                flush=True,
            )
            if name != "teacher" and teacher is None:
                teacher = training.load_model_file(root / "teacher" / "best.keras", "teacher")
            stage_start = time.monotonic()
            results[name] = training.train(config, stages[name], teacher if name != "teacher" else None, _verbose(args))
            print(
                f"{place} {name} done in {time.monotonic() - stage_start:.0f} s: test R@1 "
                f"{100 * results[name]['recall_at_1']:.2f} (best epoch {results[name]['epoch']})",
                flush=True,
            )
        # The controls train nothing: the trained rows must beat them for a claim to show learning.
        student_config = configs[next(name for name in configs if name != "teacher")]
        table = {**results, **training.controls(student_config)}
        report.print_table(table)
        write_json(root / "metrics.json", table)
        report.plot_report(
            root / "report.png", table, {name: read_history(root / name) for name in results},
            title=f"rkd-keras demo on {configs['teacher'].dataset}: the teacher, the triplet student and the RKD students",
        )
        # The best student by validation Recall@1: never select on the test classes.
        best = max((name for name in results if name != "teacher"), key=lambda name: results[name]["val_recall_at_1"])
        # The steps after the table take minutes on a CPU: each says what it does as it starts.
        print(
            f"\n[demo] t-SNE of the test embeddings of the teacher and the best student, {best} (by validation "
            f"R@1), into {root / 'embedding_map.png'} ({_minutes(time.monotonic() - start)} elapsed) ...",
            flush=True,
        )
        student = training.load_model_file(root / best / "best.keras", "student")
        embeddings = {
            "teacher": retrieval.embed(teacher, training.data(configs["teacher"], "test")),
            f"student ({best})": retrieval.embed(student, training.data(configs[best], "test")),
        }
        labels = embeddings["teacher"][1]
        names = FASHION_MNIST_CLASSES if configs["teacher"].dataset == "fashion_mnist" else None
        report.plot_embedding_map(
            root / "embedding_map.png", {name: values for name, (values, _) in embeddings.items()}, labels, names
        )
        print(
            f"[demo] exporting {best} as a SavedModel to {root / 'student_savedmodel'} "
            f"({_minutes(time.monotonic() - start)} elapsed) ...",
            flush=True,
        )
        export_student(student, root / "student_savedmodel", overwrite=True)
    top.set_status("complete", best_student=best)
    print(
        f"\nreport: {root / 'report.png'}, map: {root / 'embedding_map.png'}, best student ({best}) "
        f"exported to {root / 'student_savedmodel'}; {_minutes(time.monotonic() - start)} in all"
    )


def _compare(args, inputs):
    """Per seed, a teacher and every method's student from it; then table.md, metrics.json and report.png."""
    top = RunFolder(Path(args.runs_dir) / (args.name or f"compare-{args.task}"), kind="comparison")
    with top.claimed(lambda: _prepare_comparison(args, inputs, top)) as (configs, stages):
        _run_comparison(args, inputs, top, configs, stages)


def _prepare_comparison(args, inputs, top):
    """The comparison's checks and its folders' decisions (nothing written): the settings and folder of each run."""
    configs = {seed: dict(runs) for seed, runs in inputs["configs"].items()}
    root = top.path
    top.prepare(None, args.resume)
    stages = {seed: {name: RunFolder(root / f"seed{seed}" / name) for name in runs} for seed, runs in configs.items()}
    if not top.restart:
        # Every run decides now, so a refused resume stops before anything trains.
        for seed, runs in configs.items():
            for name, stage in stages[seed].items():
                runs[name] = stage.prepare(runs[name], resume=stage.path.exists())
    # Finished runs are read, not trained: they need neither data nor weights.
    training.check_available(
        config for seed, runs in configs.items() for name, config in runs.items()
        if stages[seed][name].status() != "complete"
    )
    return configs, stages


def _run_comparison(args, inputs, top, configs, stages):
    methods, task, few_shot = inputs["methods"], args.task, inputs.get("few_shot")
    recipe = presets.COMPARE[task]
    root = top.path
    monitor = training.MONITOR[task]
    shown = recipe["metrics"][0]
    # Metric learning: a student of the teacher's embedding width also queries the teacher's gallery (issue 23).
    first = next(iter(configs.values()))
    wide = {
        name for name, config in first.items()
        if task == "metric" and name != "teacher" and config.embedding_dim == first["teacher"].embedding_dim
    }
    controls = [name for name in training.CONTROLS if name != "untrained_wide" or wide] if task != "classification" else []
    results = {name: {} for name in ["teacher", *methods, *controls]}
    start = time.monotonic()
    with top.running():
        for seed_index, (seed, runs) in enumerate(configs.items(), 1):
            teacher = None
            for index, (name, config) in enumerate(runs.items(), 1):
                place = f"[seed {seed_index}/{len(configs)}] [{index}/{len(runs)}]"
                what = "teacher" if name == "teacher" else f"{name} student, {recipe['methods'][name]['description']}"
                stage = stages[seed][name]
                finished = stage.status() == "complete"
                plan = "finished earlier" if finished else (
                    f"{_count(config.epochs, 'epoch')} of {_count(config.steps_per_epoch, 'step')}"
                )
                print(f"\n{place} {what}: {plan} ({_minutes(time.monotonic() - start)} elapsed)", flush=True)
                if name != "teacher" and teacher is None:
                    teacher = training.load_model_file(root / f"seed{seed}" / "teacher" / "best.keras", "teacher")
                stage_start = time.monotonic()
                metrics = training.train(
                    config, stage, teacher if name != "teacher" else None, _verbose(args), plot=False,
                    gallery_model=teacher if name in wide else None, few_shot=few_shot,
                )
                results[name][seed] = metrics
                if not finished:
                    print(
                        f"{place} {name} done in {time.monotonic() - stage_start:.0f} s: test "
                        f"{report.COLUMNS[shown][0]} {100 * metrics[shown]:.2f}, validation {monitor} "
                        f"{100 * metrics[monitor]:.2f} (best epoch {metrics['epoch']})",
                        flush=True,
                    )
            if controls:
                # Computed per seed: the untrained student is that seed's initialisation.
                student_config = next(config for name, config in runs.items() if name != "teacher")
                wide_config = next((runs[name] for name in runs if name in wide), None)
                for name, metrics in training.controls(student_config, wide_config, teacher, few_shot).items():
                    results[name][seed] = metrics
        teacher_config = next(iter(configs.values()))["teacher"]
        _write_comparison(root, args, task, results, stages, teacher_config, time.monotonic() - start, few_shot)
    top.set_status("complete")
    print(f"\ntable: {root / 'table.md'}, report: {root / 'report.png'}; {_minutes(time.monotonic() - start)} in all")


# What each task's teacher trains with, for its row of the table.
_TEACHER_LOSS = {
    "metric": "triplet loss", "classification": "cross-entropy", "few_shot": "a prototypical network (prototypical loss)",
}


def _write_comparison(root, args, task, results, stages, config, seconds, few_shot=None):
    """table.md, metrics.json and report.png of a comparison's results (`{model: {seed: metrics}}`).

    The data they were measured on is read from `config` (a teacher's settings: the config file and flags
    apply to every run alike), the number of test images from the teacher's evaluation of the first seed;
    `few_shot`: the few-shot protocol the runs were tested with.
    """
    recipe = presets.COMPARE[task]
    keys = list(recipe["metrics"])
    summary = report.summarize(results, keys)
    asymmetric = report.asymmetric_summary(results)
    descriptions = {"teacher": "the teacher, " + _TEACHER_LOSS[task]}
    descriptions.update({name: recipe["methods"][name]["description"] for name in results if name in recipe["methods"]})
    descriptions.update({name: training.CONTROLS[name] for name in results if name in training.CONTROLS})
    params = {name: next(iter(by_seed.values()))["params"] for name, by_seed in results.items()}
    seeds = list(next(iter(results.values())))
    monitor = training.MONITOR[task]
    split, measured = report.measured_split(config, results["teacher"][seeds[0]]["items"], few_shot)
    lines = [
        measured if not args.config else f"{measured} Settings from {args.config}.",
        f"Seeds {', '.join(map(str, seeds))}; each model's best epoch by {monitor} on held-out training images, "
        "never on the test split; sd is the sample standard deviation over seeds.",
        f"{'Quick settings (a few steps each): not a measurement. ' if args.quick else ''}"
        f"Written {datetime.date.today().isoformat()}; {_minutes(seconds)} (min:s) of this session's wall time.",
    ]
    title = f"rkd-keras compare --task {task}"
    (root / "table.md").write_text(report.comparison_table(title, lines, results, summary, keys, descriptions, params))
    write_json(root / "metrics.json", {
        "task": task, "dataset": config.dataset, **split, "metrics": keys, "seeds": seeds,
        **({"few_shot": {**few_shot, "settings": [list(pair) for pair in few_shot["settings"]]}} if few_shot else {}),
        **({"asymmetric_metrics": list(report.ASYMMETRIC)} if asymmetric else {}),
        "models": {
            name: {"description": descriptions[name], "params": params[name],
                   "summary": {**summary[name], **({} if name == "teacher" else asymmetric.get(name, {}))},
                   "per_seed": {str(seed): metrics for seed, metrics in by_seed.items()}}
            for name, by_seed in results.items()
        },
    })
    curves = {
        name: [read_history(stages[seed][name].path).get(monitor, []) for seed in seeds]
        for name in results if name in recipe["methods"]
    }
    report.plot_comparison(root / "report.png", summary, keys, curves, task, asymmetric=asymmetric)


_COMMANDS = {
    "compare": _compare,
    "demo": _demo,
    "train-teacher": _train_teacher,
    "distill": _distill,
    "embed": _embed,
    "evaluate": _evaluate,
    "tune": _tune,
    "export": _export,
}


def run(args, inputs) -> None:
    """Runs the parsed command on its checked inputs (see `rkd_keras.cli.inputs`).

    Raises:
        ArtifactMismatch: `export` wrote an artifact that failed its check (and removed it): exit 1.
        RunFailed: a write error (a full disk...) stopped a run, marked failed and resumable: exit 1.
    """
    _COMMANDS[args.command](args, inputs)
