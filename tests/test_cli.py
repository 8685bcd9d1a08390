"""The rkd-keras command line: the demo, presets on mocked tfds, run folders (resume, retry), quiet start-up."""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import listing, mlp, mock_cub
import rkd_keras
from rkd_keras import Term, presets, recall_at_k
from rkd_keras.cli import main, runs, training
from rkd_keras.cli.config import RunConfig, resolve_config
from rkd_keras.cli.parser import EVALUATE_SETTINGS, build_parser
from rkd_keras.retrieval import RetrievalRecall, embed, embed_with_gallery

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--max-train-items", "600", "--max-eval-items", "200", "--width", "4", "--quiet"]


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_demo_quick_writes_the_table_metrics_report_and_export(tmp_path, capsys):
    assert main(["demo", "--quick", "--quiet", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "demo"
    models = ["teacher", "triplet", "rkd_d", "rkd_a", "rkd_da"]
    # Each stage says what it trains and where it is among the five.
    for place, stage in enumerate(["the teacher", "triplet student", "rkd_d student", "rkd_a student", "rkd_da student"], 1):
        assert f"[{place}/5] {stage}" in out, out
    assert "[3/5] rkd_d student, RKD-D from the teacher: 1 epoch of 4 steps" in out
    for name in models:
        assert any(line.startswith(name) for line in out.splitlines()), out
    # The minutes after the table (t-SNE, export) each say what they do as they start, in that order.
    lines = out.splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("rkd_da "))
    tsne = next(i for i, line in enumerate(lines) if line.startswith("[demo] t-SNE of the test embeddings"))
    export = next(i for i, line in enumerate(lines) if line.startswith("[demo] exporting"))
    assert table < tsne < export, out
    best = json.loads((tmp_path / "demo" / "status.json").read_text())["best_student"]
    assert f"the best student, {best} (by validation R@1)" in lines[tsne] and f"exporting {best} as a SavedModel" in lines[export]
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics) == [*models, "raw_pixels", "untrained"]  # the controls train nothing (issue 21)
    for values in metrics.values():
        assert 0.0 <= values["recall_at_1"] <= values["recall_at_8"] <= 1.0
    assert metrics["teacher"]["params"] >= 10 * metrics["rkd_da"]["params"]
    assert metrics["raw_pixels"]["params"] == 0 and metrics["untrained"]["params"] == metrics["rkd_da"]["params"]
    assert metrics["raw_pixels"]["items"] == metrics["teacher"]["items"]
    assert any(line.startswith("raw_pixels ") for line in lines) and any(line.startswith("untrained ") for line in lines)
    for picture in ("report.png", "embedding_map.png", "rkd_da/report.png"):
        assert (root / picture).read_bytes()[:8] == PNG_SIGNATURE
    with open(root / "rkd_da" / "history.csv") as f:
        columns = next(csv.reader(f))
    assert {"epoch", "loss", "rkd_distance", "rkd_angle", "val_recall_at_1", "val_recall_at_8"} <= set(columns)
    assert json.loads((root / "status.json").read_text())["status"] == "complete"
    assert (root / "student_savedmodel" / "saved_model.pb").is_file()
    assert not (root / "teacher" / "backup").exists()  # removed once the run is complete


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["compare"], ["train-teacher"], ["distill"], ["embed"], ["evaluate"], ["tune"], ["export"]]
)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args([*command, "--help"])
    assert exit.value.code == 0 and "usage: rkd-keras" in capsys.readouterr().out


def test_help_shows_each_roles_defaults_and_the_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--embedding-dim N width of the embedding (default: 32)" in text  # the student's, not the teacher's 128
    assert "--learning-rate X Adam's learning rate (default: 0.003)" in text
    assert "--sampling {distance_weighted,batch_hard,all}" in text
    assert "--preset {cars196,cub200,sop}" in text


def test_evaluate_help_lists_only_the_flags_it_reads(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    flags = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    assert flags == {
        "--help", "--model", "--split", "--output", "--gallery-model", "--preset", "--config", "--dataset", "--train-classes",
        "--image-size", "--resize-size", "--channels", "--validation-fraction", "--max-eval-items", "--data-dir", "--dataset-path",
        "--manual-dir", "--download", "--no-download",
    }, flags
    # The data settings, as training has them.
    assert set(EVALUATE_SETTINGS) < {field.name for field in dataclasses.fields(RunConfig)}


def test_embed_help_lists_only_the_flags_it_reads(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "--help"])
    flags = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    assert flags == {
        "--help", "--model", "--output", "--overwrite", "--batch-size", "--quiet", "--preset", "--config", "--dataset",
        "--train-classes", "--image-size", "--resize-size", "--channels", "--data-dir", "--dataset-path", "--manual-dir",
        "--download", "--no-download",
        "--teacher-embeddings",  # named by its description: distill --teacher-embeddings reads the file
    }, flags


def test_presets_reach_the_run_settings_unchanged():
    for name, preset in presets.PRESETS.items():
        for role in ("teacher", "student"):
            config = dataclasses.asdict(resolve_config(role, name))
            assert {key: config[key] for key in preset[role]} == preset[role], (name, role)
    student = resolve_config("student", "sop")
    assert (student.backbone, student.embedding_dim, student.l2_normalize, student.epochs) == ("resnet18", 128, False, 120)
    assert (student.distance_weight, student.angle_weight, student.triplet_weight) == (1.0, 2.0, 0.0)


def test_yaml_numbers_written_like_1e_3_are_read_as_numbers(tmp_path):
    file = tmp_path / "config.yaml"
    file.write_text("learning_rate: 1e-3\nweight_decay: 5e-4\nmargin: 2e-1\n")
    config = resolve_config("teacher", config_file=file)
    assert (config.learning_rate, config.weight_decay, config.margin) == (1e-3, 5e-4, 0.2)


TINY = ["--image-size", "32", "--weights", "none", "--epochs", "1", "--steps-per-epoch", "2",
        "--classes-per-batch", "3", "--samples-per-class", "2", "--download", "--quiet"]  # fmt: skip


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_cub_preset_trains_distills_and_evaluates_on_mocked_tfds(tmp_path, capsys):
    runs_dir = ["--runs-dir", str(tmp_path)]
    # The recipe's pipeline (augmentation, step decay, weight decay, tfds, class split)
    # with small networks: the backbones themselves are built in test_models.
    small = ["--backbone", "small_cnn", "--width", "4"]
    with tfds.testing.mock_data(as_dataset_fn=mock_cub):
        assert main(["train-teacher", "--preset", "cub200", *TINY, *small, *runs_dir, "--name", "t"]) == 0
        teacher = tmp_path / "t" / "best.keras"
        config = json.loads((tmp_path / "t" / "config.json").read_text())
        assert (config["augment"], config["embedding_dim"], config["l2_normalize"], config["channels"]) == (True, 512, True, 3)
        assert config["lr_decay_epochs"] == [25, 30, 35] and config["learning_rate"] == 1e-5
        assert main(["distill", "--preset", "cub200", "--teacher", str(teacher), *TINY, *small, *runs_dir, "--name", "s"]) == 0
        student_config = json.loads((tmp_path / "s" / "config.json").read_text())
        assert (student_config["embedding_dim"], student_config["l2_normalize"]) == (128, False)
        assert (student_config["distance_weight"], student_config["angle_weight"], student_config["triplet_weight"]) == (1.0, 2.0, 0.0)
        output = tmp_path / "eval.json"
        evaluate = ["evaluate", "--model", str(tmp_path / "s" / "best.keras"), "--preset", "cub200"]
        assert main([*evaluate, "--image-size", "32", "--download", "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    # The test split: classes 100–199, 2 images from each tfds split.
    assert metrics["items"] == 400 and metrics["params"] == keras.models.load_model(tmp_path / "s" / "best.keras").count_params()
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["items"] == 400


def test_interrupted_run_resumes_at_its_epoch_and_keeps_the_best_epoch_of_the_whole_run(tmp_path, capsys, monkeypatch):
    """Epoch 2 scores best; the run is stopped in epoch 3, resumed, and epoch 3's worse model must not replace it."""
    argv = ["train-teacher", "--epochs", "3", "--steps-per-epoch", "2", *SMALL, "--runs-dir", str(tmp_path)]
    scores, begun, stopped = {0: 0.5, 1: 0.9, 2: 0.3}, [], []

    def controlled_recall(self, epoch, logs=None):
        logs["val_recall_at_1"] = scores[epoch]

    def ctrl_c_in_epoch_three(self, epoch, logs=None):
        begun.append(epoch)
        if epoch == 2 and not stopped:
            stopped.append(epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(RetrievalRecall, "on_epoch_end", controlled_recall)
    monkeypatch.setattr(RetrievalRecall, "on_epoch_begin", ctrl_c_in_epoch_three)
    run = tmp_path / "teacher"
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert json.loads((run / "status.json").read_text())["status"] == "incomplete"
    assert json.loads((run / "best.json").read_text()) == {"epoch": 2, "val_recall_at_1": 0.9}
    best_of_epoch_two = (run / "best.keras").read_bytes()
    assert main(argv) == 2  # epochs finished: the same command refuses to overwrite them
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert begun == [0, 1, 2, 2]  # resumed at the interrupted epoch, not from scratch
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert (run / "best.keras").read_bytes() == best_of_epoch_two
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["epoch"], metrics["val_recall_at_1"]) == (2, 0.9)
    # The reported test metrics are those of the epoch-2 model, computed here anew.
    config = RunConfig(**json.loads((run / "config.json").read_text()))
    expected = recall_at_k(*embed(keras.models.load_model(run / "best.keras"), training.data(config, "test")))
    assert [metrics[f"recall_at_{k}"] for k in (1, 2, 4, 8)] == [expected[k] for k in (1, 2, 4, 8)]
    assert json.loads((run / "status.json").read_text())["status"] == "complete"


def test_a_run_stopped_while_testing_its_best_epoch_resumes_there_without_training_again(tmp_path, capsys, monkeypatch):
    argv = ["train-teacher", "--epochs", "1", "--steps-per-epoch", "2", *SMALL, "--runs-dir", str(tmp_path)]
    evaluate, begun = training.evaluate, []

    def ctrl_c_once(*args, **kwargs):
        monkeypatch.setattr(training, "evaluate", evaluate)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate", ctrl_c_once)
    monkeypatch.setattr(RetrievalRecall, "on_epoch_begin", lambda self, epoch, logs=None: begun.append(epoch))
    assert main(argv) == 130
    assert main([*argv, "--resume"]) == 0
    assert begun == [0]  # the finished epoch was not trained again
    with open(tmp_path / "teacher" / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]
    assert json.loads((tmp_path / "teacher" / "metrics.json").read_text())["epoch"] == 1


def test_a_run_that_failed_at_start_up_is_retried_by_the_same_command(tmp_path, capsys, monkeypatch):
    argv = ["train-teacher", "--epochs", "1", "--steps-per-epoch", "2", *SMALL, "--runs-dir", str(tmp_path)]
    fit = keras.Model.fit

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "fit", full_disk)
    assert main(argv) == 1  # a write error, not a bad input
    status = json.loads((tmp_path / "teacher" / "status.json").read_text())
    assert status["status"] == "failed" and "No space left" in status["reason"]
    monkeypatch.setattr(keras.Model, "fit", fit)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "never finished an epoch (OSError: [Errno 28] No space left on device); starting it again" in err
    assert json.loads((tmp_path / "teacher" / "status.json").read_text())["status"] == "complete"


def _stopped_run(path, config, epochs_done=1):
    """A run folder as an interrupted run leaves it: settings, status, backed-up epochs."""
    (path / "backup").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    (path / "status.json").write_text(json.dumps({"status": "incomplete", "reason": "KeyboardInterrupt: "}))
    (path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": epochs_done, "batch": 0}))


def test_resume_with_other_settings_lists_them_and_changes_nothing(tmp_path, capsys):
    _stopped_run(tmp_path / "teacher", resolve_config("teacher"))
    before = listing(tmp_path)
    code = main(["train-teacher", "--learning-rate", "0.001", "--epochs", "9", "--resume", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot resume" in err and "learning_rate 0.003 → 0.001" in err and "epochs 6 → 9" in err
    assert "saved → given" in err and "--name" in err
    assert listing(tmp_path) == before


def test_resume_may_read_the_data_from_elsewhere(tmp_path, capsys):
    # A dataset that tensorflow-datasets prepares: only those read --data-dir and --download.
    saved = dataclasses.replace(resolve_config("teacher"), dataset="cars196")
    _stopped_run(tmp_path / "teacher", saved)
    moved = dataclasses.replace(saved, data_dir=str(tmp_path / "tfds"), download=True)
    assert runs.RunFolder(tmp_path / "teacher").prepare(moved, resume=True) == moved
    err = capsys.readouterr().err
    assert f"data_dir None → '{tmp_path / 'tfds'}'" in err and "download False → True" in err


def test_resume_of_a_run_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run; leave out --resume"):
        runs.RunFolder(tmp_path / "teacher").prepare(resolve_config("teacher"), resume=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_tune_searches_the_weights_and_saves_the_best_student(tmp_path, capsys):
    common = ["--max-train-items", "600", "--max-eval-items", "200", "--quiet", "--runs-dir", str(tmp_path)]
    assert main(["train-teacher", "--epochs", "1", "--steps-per-epoch", "2", "--width", "4", *common]) == 0
    teacher = str(tmp_path / "teacher" / "best.keras")
    argv = ["tune", "--teacher", teacher, "--max-trials", "2", "--epochs", "1", "--steps-per-epoch", "2", *common]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "tune" / "metrics.json").read_text())
    assert metrics["hyperparameters"]["terms"] in ("distance", "angle", "both")
    assert json.loads((tmp_path / "tune" / "best_hyperparameters.json").read_text()) == metrics["hyperparameters"]
    assert (tmp_path / "tune" / "best.keras").is_file() and "tuned" in capsys.readouterr().out


# The console script as pip writes it: `sys.argv[0]` ends in rkd-keras while rkd_keras is imported.
CONSOLE_SCRIPT = "import sys\nfrom rkd_keras.cli import main\nsys.exit(main())\n"


def _imported_modules(argv, tmp_path, console_script):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if console_script:
        script = tmp_path / "bin" / "rkd-keras"
        script.parent.mkdir(exist_ok=True)
        script.write_text(CONSOLE_SCRIPT)
        command = [sys.executable, str(script), *argv]
    else:
        command = [sys.executable, "-m", "rkd_keras", *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    messages = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    return done.returncode, modules, messages


@pytest.mark.parametrize("console_script", [True, False], ids=["rkd-keras", "python -m rkd_keras"])
@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["train-teacher", "--epohcs", "3"], 2),
        (["train-teacher", "--learning-rate", "-0.1"], 2),
        (["distill", "--teacher", "missing.keras"], 2),
    ],
    ids=["help", "bad flag", "bad value", "missing file"],
)
def test_help_and_mistakes_return_without_importing_tensorflow(argv, code, console_script, tmp_path):
    returncode, modules, messages = _imported_modules(argv, tmp_path, console_script)
    assert returncode == code, messages
    assert "rkd_keras.cli" in modules  # the profile did record the command line's imports
    assert not {name for name in modules if name.split(".")[0] in ("tensorflow", "keras", "numpy", "matplotlib")}
    if code:
        assert len(messages) == 1 and messages[0].startswith("rkd-keras"), messages
    assert not list(tmp_path.glob("runs"))


def _two_pkt_terms_of_one_name():
    return rkd_keras.Distiller(mlp(4, 3, "teacher"), mlp(4, 2, "student"), terms=[Term("pkt"), Term("pkt", 2.0)])


# A mistake in a config file's terms, where the command line says it is, and the same mistake made in the library.
TERM_MISTAKES = {
    "named loss": ("[{loss: pkt, name: loss}]", "terms[0]: ", lambda: Term("pkt", name="loss")),
    "named val_x": ("[{loss: pkt, name: val_x}]", "terms[0]: ", lambda: Term("pkt", name="val_x")),
    "named task_loss": ("[{loss: pkt}, {loss: pkt, name: task_loss}]", "terms[1]: ", lambda: Term("pkt", name="task_loss")),
    "name not a string": ("[{loss: pkt, name: 3}]", "terms[0]: ", lambda: Term("pkt", name=3)),
    "same name": ("[{loss: pkt}, {loss: pkt, weight: 2}]", "", _two_pkt_terms_of_one_name),
    "unknown loss": ("[{loss: rkd}]", "terms[0]: ", lambda: Term("rkd")),
    "negative weight": ("[{loss: pkt, weight: -1}]", "terms[0]: ", lambda: Term("pkt", weight=-1)),
    "infinite weight": ("[{loss: pkt, weight: .inf}]", "terms[0]: ", lambda: Term("pkt", weight=float("inf"))),
    "layer not a name": ("[{loss: pkt, teacher_layer: 3}]", "terms[0]: ", lambda: Term("pkt", teacher_layer=3)),
}


@pytest.mark.parametrize("mistake", TERM_MISTAKES)
def test_a_mistake_in_the_terms_is_refused_before_tensorflow_loads_with_the_librarys_message(mistake, tmp_path):
    terms, where, in_the_library = TERM_MISTAKES[mistake]
    with pytest.raises(ValueError) as error:
        in_the_library()
    (tmp_path / "c.yaml").write_text(f"terms: {terms}\n")
    argv = ["distill", "--teacher", "t.keras", "--config", "c.yaml", "--runs-dir", str(tmp_path)]
    returncode, modules, messages = _imported_modules(argv, tmp_path, console_script=False)
    assert returncode == 2 and "rkd_keras.cli" in modules
    assert not {name for name in modules if name.split(".")[0] in ("tensorflow", "keras")}
    assert messages == [f"rkd-keras distill: error: config file c.yaml: {where}{error.value}"]


def test_a_command_that_loads_tensorflow_prints_none_of_its_start_up_logs(tmp_path):
    """The model is refused after TensorFlow is loaded: stderr holds that one line and nothing of TensorFlow."""
    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs))).save(tmp_path / "rgb.keras")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-m", "rkd_keras", "evaluate", "--model", str(tmp_path / "rgb.keras")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "rkd-keras evaluate: error: the model takes images of shape (16, 16, 3) but the data gives (28, 28, 1) "
        "(--image-size 28, --channels 1); give the settings it was trained with."
    ]


def test_import_rkd_keras_registers_its_classes_and_needs_neither_keras_tuner_nor_matplotlib(tmp_path, rng):
    """A program that imports rkd_keras, with keras-tuner and matplotlib blocked, loads a saved Distiller by
    Keras alone (no name of rkd_keras used); only rkd_keras.tuning needs keras-tuner. (Keras itself imports
    matplotlib whenever it is installed, so the blocking is the test, not sys.modules.)"""
    from rkd_keras import Distiller, embedding_model

    teacher = embedding_model("small_cnn", 8, input_shape=(8, 8, 1), width=2)
    distiller = Distiller(teacher, embedding_model("small_cnn", 4, input_shape=(8, 8, 1), width=2, l2_normalize=False))
    distiller.save(tmp_path / "distiller.keras")
    images = rng.uniform(0, 255, size=(3, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", distiller.predict(images, verbose=0))
    program = (
        "import sys\n"
        "sys.modules['keras_tuner'] = sys.modules['matplotlib'] = None\n"
        "import keras, numpy as np, rkd_keras\n"
        "model = keras.models.load_model('distiller.keras')\n"
        "assert type(model).__name__ == 'Distiller', type(model)\n"
        "assert np.array_equal(model.predict(np.load('images.npy'), verbose=0), np.load('expected.npy'))\n"
        "try:\n"
        "    rkd_keras.RKDHyperModel\n"
        "except ImportError:\n"
        "    print('tuning needs keras_tuner')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "tuning needs keras_tuner"


def test_keras_errors_reach_the_terminal_as_one_plain_line():
    """Keras wraps an error inside a layer call in a frame and bold escape codes; the cause is kept, alone."""
    from rkd_keras.cli import one_line

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError) as error:
        model(np.zeros((2, 8, 8, 1), np.float32))
    assert "\x1b[" in str(error.value) and "Arguments received" in str(error.value)
    line = one_line(error.value)
    assert "\x1b" not in line and "\n" not in line and "Arguments received" not in line
    assert "expected axis -1 of input shape to have value 3" in line


def test_the_command_lines_choices_are_the_librarys():
    from rkd_keras import choices, data, losses, models

    assert choices.TRIPLET_SAMPLINGS == losses.TRIPLET_SAMPLINGS
    assert data.DATASETS is choices.DATASETS and models.BACKBONES is choices.BACKBONES
    assert choices.LOSS_NAMES == tuple(losses.LOSSES)
    assert set(choices.BACKBONE_STAGES) == set(choices.BACKBONES)


def test_evaluate_with_a_gallery_model_adds_the_asymmetric_metrics(tmp_path, capsys):
    from rkd_keras import embedding_model

    student = embedding_model("small_cnn", 8, input_shape=(28, 28, 1), width=4, name="student")
    teacher = embedding_model("small_cnn", 8, input_shape=(28, 28, 1), width=8, name="teacher")
    student.save(tmp_path / "student.keras")
    teacher.save(tmp_path / "teacher.keras")
    argv = ["evaluate", "--model", str(tmp_path / "student.keras"), "--max-eval-items", "60"]
    assert main([*argv, "--gallery-model", str(tmp_path / "teacher.keras"), "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    config = resolve_config("student", overrides={"max_eval_items": 60})
    queries, gallery, labels = embed_with_gallery(student, teacher, training.data(config, "test"))
    assert metrics["asym_recall_at_1"] == pytest.approx(recall_at_k(queries, labels, (1,), gallery=gallery)[1], abs=1e-12)
    assert metrics["recall_at_1"] == pytest.approx(recall_at_k(queries, labels, (1,))[1], abs=1e-12)
    assert {"asym_map_at_r", "asym_r_precision", "map_at_r"} <= metrics.keys()
    wide = embedding_model("small_cnn", 16, input_shape=(28, 28, 1), width=4, name="wide")
    wide.save(tmp_path / "wide.keras")
    assert main([*argv, "--gallery-model", str(tmp_path / "wide.keras")]) == 2
    assert "needs a gallery model of the same width" in capsys.readouterr().err


def _small_student(tmp_path):
    student = rkd_keras.embedding_model("small_cnn", 8, input_shape=(28, 28, 1), width=4, l2_normalize=False,
                                         name="student")
    student.save(tmp_path / "student.keras")
    (tmp_path / "run.json").write_text(json.dumps({"max_train_items": 300, "max_eval_items": 200}))
    return student


def test_export_writes_each_format_and_checks_it_on_test_images(tmp_path, capsys):
    _small_student(tmp_path)
    for format, names in (("onnx", ["s.onnx"]), ("litert", ["s.tflite"]), ("openvino", ["s.xml", "s.bin"])):
        argv = ["export", "--model", str(tmp_path / "student.keras"), "--output", str(tmp_path / names[0]),
                "--format", format, "--config", str(tmp_path / "run.json"), "--check-items", "32"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"[export] writing {format} to" in out and "checked in its own runtime on 32 test images" in out, out
        difference = float(out.split("of the largest output")[0].rsplit(", ", 1)[1])
        assert 0 <= difference <= 1e-4 and all((tmp_path / name).is_file() for name in names)


@pytest.mark.parametrize("format, name", [("onnx", "s.onnx"), ("openvino", "s.xml")])
def test_export_removes_an_artifact_that_fails_its_check_and_exits_1(tmp_path, capsys, monkeypatch, format, name):
    import rkd_keras.export

    _small_student(tmp_path)
    run = rkd_keras.export.run_artifact
    monkeypatch.setattr(rkd_keras.export, "run_artifact", lambda path, inputs: run(path, inputs) * 1.01)
    argv = ["export", "--model", str(tmp_path / "student.keras"), "--output", str(tmp_path / name),
            "--format", format, "--config", str(tmp_path / "run.json")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not give the student's outputs" in err and "was removed" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "student.keras"]  # an OpenVINO .bin too


@pytest.mark.slow  # an int8 LiteRT conversion and two Recall@K passes: ~40 s
def test_export_int8_reports_recall_of_both_and_the_sizes(tmp_path, capsys):
    _small_student(tmp_path)
    argv = ["export", "--model", str(tmp_path / "student.keras"), "--output", str(tmp_path / "s.tflite"),
            "--format", "litert", "--quantize", "int8", "--config", str(tmp_path / "run.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("[export] Recall@1"))
    found = re.search(r"test images: ([\d.]+) float32, ([\d.]+) int8; ", line)
    assert found, line
    float_recall, int8_recall = map(float, found.groups())
    assert 0 < float_recall <= 100 and abs(float_recall - int8_recall) < 10, line
    assert "on the 200 test images" in line and "float32 weights" in line and "kB file" in line
