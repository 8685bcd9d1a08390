"""The rkd-keras command line: demo artifacts, presets on mocked tfds, errors, resume."""

import csv
import json

import pytest
import tensorflow_datasets as tfds

from conftest import mock_cub
from rkd_keras import _runs
from rkd_keras.cli import build_parser, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_quick_writes_the_table_metrics_report_and_export(tmp_path, capsys):
    assert main(["demo", "--quick", "--quiet", "--runs-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    root = tmp_path / "demo"
    models = ["teacher", "triplet", "rkd_d", "rkd_a", "rkd_da"]
    for name in models:
        assert any(line.startswith(name) for line in table.splitlines()), table
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics) == models
    for values in metrics.values():
        assert 0.0 <= values["recall_at_1"] <= values["recall_at_8"] <= 1.0
    assert metrics["teacher"]["params"] >= 10 * metrics["rkd_da"]["params"]
    for picture in ("report.png", "embedding_map.png", "rkd_da/report.png"):
        assert (root / picture).read_bytes()[:8] == PNG_SIGNATURE
    with open(root / "rkd_da" / "history.csv") as f:
        columns = next(csv.reader(f))
    assert {"epoch", "loss", "rkd_distance", "rkd_angle", "val_recall_at_1", "val_recall_at_8"} <= set(columns)
    assert json.loads((root / "status.json").read_text())["status"] == "complete"
    assert (root / "student_savedmodel" / "saved_model.pb").is_file()


@pytest.mark.parametrize("command", [[], ["demo"], ["train-teacher"], ["distill"], ["evaluate"], ["export"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args([*command, "--help"])
    assert exit.value.code == 0 and "usage: rkd-keras" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-teacher", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
        (["train-teacher", "--dataset", "imagenet"], "dataset must be one of cub200, cars196, sop, fashion_mnist"),
        (["train-teacher", "--backbone", "resnet50"], "backbone resnet50 needs channels=3"),
        (["distill", "--teacher", "missing.keras"], "teacher file missing.keras does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_flags_give_one_line_errors(argv, message, capsys, tmp_path):
    try:
        code = main([*argv, "--runs-dir", str(tmp_path)] if argv[0] != "frobnicate" else argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"epochs": 2, "learning_rat": 0.1}', "unknown config keys learning_rat"),
        ('{"epochs": "two"}', "epochs must be int, received 'two'"),
        ("epochs: [1, 2\n", "is not valid JSON or YAML"),
        ("lr_decay_epochs: [1.5]\n", "lr_decay_epochs must be a list of integers"),
        ("!!python/object/apply:os.system ['echo unsafe']\n", "is not valid JSON or YAML"),
    ],
)
def test_bad_config_files_give_one_line_errors(content, message, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(content)
    assert main(["train-teacher", "--config", str(config), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "teacher").exists()  # nothing written on a config error


TINY = ["--image-size", "32", "--weights", "none", "--epochs", "1", "--steps-per-epoch", "2",
        "--classes-per-batch", "3", "--samples-per-class", "2", "--download", "--quiet"]  # fmt: skip


def test_cub_preset_trains_distills_and_evaluates_on_mocked_tfds(tmp_path, capsys):
    runs = ["--runs-dir", str(tmp_path)]
    with tfds.testing.mock_data(as_dataset_fn=mock_cub):
        assert main(["train-teacher", "--preset", "cub200", *TINY, *runs, "--name", "t"]) == 0
        teacher = tmp_path / "t" / "best.keras"
        config = json.loads((tmp_path / "t" / "config.json").read_text())
        assert (config["backbone"], config["embedding_dim"], config["l2_normalize"]) == ("resnet50", 512, True)
        assert config["lr_decay_epochs"] == [25, 30, 35] and config["learning_rate"] == 1e-5
        assert main(["distill", "--preset", "cub200", "--teacher", str(teacher), *TINY, *runs, "--name", "s"]) == 0
        student_config = json.loads((tmp_path / "s" / "config.json").read_text())
        assert (student_config["backbone"], student_config["l2_normalize"]) == ("resnet18", False)
        assert (student_config["distance_weight"], student_config["angle_weight"], student_config["triplet_weight"]) == (1.0, 2.0, 0.0)
        output = tmp_path / "eval.json"
        assert main(["evaluate", "--model", str(tmp_path / "s" / "best.keras"), "--preset", "cub200", *TINY,
                     "--output", str(output)]) == 0  # fmt: skip
    metrics = json.loads(output.read_text())
    # The test split: classes 100–199, 2 images from each tfds split.
    assert metrics["items"] == 400 and metrics["params"] > 11_000_000
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["items"] == 400


def test_interrupted_run_is_marked_incomplete_and_resume_finishes_it(tmp_path, capsys, monkeypatch):
    argv = ["train-teacher", "--epochs", "3", "--steps-per-epoch", "3", "--max-train-items", "600",
            "--max-eval-items", "200", "--width", "4", "--quiet", "--runs-dir", str(tmp_path)]  # fmt: skip
    save = _runs._BestCheckpoint.on_epoch_end
    calls = []

    def ctrl_c_in_epoch_two(self, epoch, logs=None):
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        save(self, epoch, logs)

    monkeypatch.setattr(_runs._BestCheckpoint, "on_epoch_end", ctrl_c_in_epoch_two)
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    status = json.loads((tmp_path / "teacher" / "status.json").read_text())
    assert status["status"] == "incomplete"
    assert main(argv) == 2  # the folder exists: refuse to overwrite it
    assert main([*argv, "--resume"]) == 0
    assert calls == [0, 1, 1, 2]  # resumed at the interrupted epoch, not from scratch
    with open(tmp_path / "teacher" / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert json.loads((tmp_path / "teacher" / "status.json").read_text())["status"] == "complete"


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
