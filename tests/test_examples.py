"""The examples run, quickly, as a newcomer would run them."""

import runpy
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

import rkd_keras
from conftest import mock_cub

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script, *argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_distill_fashion_mnist_example_runs(monkeypatch, capsys):
    _run(EXAMPLES / "distill_fashion_mnist.py", "--quick", monkeypatch=monkeypatch)
    table = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[0] for line in table] == ["teacher", "student"]
    assert all(0 <= float(value) <= 100 for line in table for value in line.split()[2:])


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_cub200_recipe_example_runs_on_mocked_tfds(monkeypatch, capsys):
    with tfds.testing.mock_data(as_dataset_fn=mock_cub):
        _run(EXAMPLES / "cub200_recipe.py", "--quick", "--no-imagenet", "--download", monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert lines[0].startswith("teacher R@1=") and lines[1].startswith("student R@1=")


@pytest.mark.slow
def test_distill_from_pytorch_example_prints_both_recalls(monkeypatch, capsys, tmp_path):
    _run(EXAMPLES / "distill_from_pytorch.py", "--quick", "--workdir", str(tmp_path), monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[0] for line in lines] == ["teacher", "student"], lines
    recalls = [float(line.split()[1].removeprefix("R@1=")) for line in lines]
    # 5 unseen classes of 40 images: chance is about 20; the PyTorch teacher's rows are the file's.
    assert all(20 < recall <= 100 for recall in recalls), lines
    assert len(rkd_keras.read_embeddings(tmp_path / "teacher.parquet")[0]) == 400
