"""Every bad input gets one clear error, and nothing is written or deleted.

Command line: exit status 2, exactly one line on stderr (`rkd-keras COMMAND: error: ...`) with the
message's key words, and the working folder unchanged. API: the exact exception type and key words.
"""

import dataclasses
import json
import shutil
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import UnpreparedBuilder, listing
from rkd_keras import data, embedding_model, export_student, map_at_r, presets, r_precision, recall_at_k
from rkd_keras.cli import main
from rkd_keras.cli.config import ConfigError, RunConfig
from rkd_keras.models import WeightsNotAvailableError, classifier_model
from rkd_keras.retrieval import RetrievalRecall


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Overrides conftest's: the inputs here are refused before any training, so there is no Keras state
    to reset, and clearing it (a garbage collection) would cost ~0.4 s a case."""
    yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad (and a few good) files the cases below are given."""
    folder = tmp_path_factory.mktemp("inputs")
    inputs = keras.Input((16, 16, 3))
    rgb = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs)))
    rgb.save(folder / "rgb.keras")
    whole = (folder / "rgb.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.keras").write_bytes(b"")
    (folder / "folder.keras").mkdir()
    rgb.save_weights(folder / "weights.weights.h5")
    # As `compare --task classification` saves its runs' best.keras: the data's images in, logits out.
    classifier_model("small_cnn", 10, input_shape=(28, 28, 1), width=2, name="classifier").save(folder / "classifier.keras")
    with zipfile.ZipFile(folder / "no_config.keras", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    (folder / "notes").mkdir()
    (folder / "notes" / "keep.txt").write_text("mine")
    configs = {
        "unknown_key.json": '{"epochs": 2, "learning_rat": 0.1}',
        "word.yaml": "epochs: two\n",
        "broken.yaml": "epochs: [1, 2\n",
        "float_epochs.yaml": "lr_decay_epochs: [1.5]\n",
        "unsafe.yaml": "!!python/object/apply:os.system ['echo unsafe']\n",
        "list.yaml": "- epochs\n- 3\n",
        "negative_rate.yaml": "learning_rate: -1e-3\n",
        "quoted_bool.yaml": 'augment: "yes"\n',
        "twice.yaml": "epochs: 2\nlearning_rate: 0.001\nepochs: 3\n",
        "twice.json": '{"epochs": 2, "epochs": 3}\n',
        "fashion_data_dir.yaml": "data_dir: notes\n",
        "notes.onnx": "not a model\n",
        "notes.xml": "<notes>not a model</notes>\n",
        "stray.bin": "not the weights of a model\n",
        "imagenet_small_cnn.yaml": "weights: imagenet\n",
        "imagenet_resnet50.yaml": "weights: imagenet\nbackbone: resnet50\nchannels: 3\nimage_size: 32\n",
        # A data folder that does not exist: tensorflow-datasets finds nothing prepared, and downloads nothing.
        "cifar_missing.yaml": "dataset: cifar10\ndata_dir: no-tfds-data\n",
    }
    for name, text in configs.items():
        (folder / name).write_text(text)
    # Finished run folders of each kind, for the commands that must not write over another's.
    teacher = folder / "runs" / "finished-teacher"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text(json.dumps(dataclasses.asdict(RunConfig())))
    (teacher / "metrics.json").write_text('{"recall_at_1": 0.5}')
    (teacher / "status.json").write_text('{"status": "complete", "kind": "run"}')
    comparison = folder / "runs" / "finished-compare"
    (comparison / "seed0" / "teacher").mkdir(parents=True)
    (comparison / "metrics.json").write_text('{"task": "metric"}')
    (comparison / "status.json").write_text('{"status": "complete", "kind": "comparison"}')
    return folder


@pytest.fixture
def workdir(files, tmp_path, monkeypatch):
    """A working folder holding the input files, where runs/ would be written: files as links, folders
    copied (the check that nothing is written looks inside them)."""
    for path in files.iterdir():
        if path.is_dir():
            shutil.copytree(path, tmp_path / path.name)
        else:
            (tmp_path / path.name).symlink_to(path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli_error(argv, workdir, capsys):
    """Runs the command line; returns its one error line, after checking the exit status and the folder."""
    before = listing(workdir)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rkd-keras"), err
    assert "\x1b[" not in err
    assert listing(workdir) == before  # nothing written or deleted
    return err


CLI_CASES = {
    # Flags and their values, refused by the parser.
    "unknown command": (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    "flag with a typo": (["train-teacher", "--epohcs", "3"], ["unrecognized arguments: --epohcs"]),
    "word for a number": (["train-teacher", "--epochs", "many"], ["--epochs: invalid int value: 'many'"]),
    "unknown dataset": (["train-teacher", "--dataset", "imagenet"], ["--dataset: invalid choice: 'imagenet'", "fashion_mnist"]),
    "demo of 0 epochs": (["demo", "--epochs", "0"], ["--epochs: must be an integer >= 1, received '0'"]),
    "negative seed": (["demo", "--seed", "-1"], ["--seed: must be an integer in [0, 4294967295], received '-1'"]),
    "no trials": (["tune", "--teacher", "rgb.keras", "--max-trials", "0"], ["--max-trials: must be an integer >= 1"]),
    "name outside runs": (["train-teacher", "--name", "../elsewhere"], ["--name: must be a folder name without '/'"]),
    # Settings out of range, from flags.
    "negative learning rate": (["train-teacher", "--learning-rate", "-0.001"], ["learning_rate must be a finite number > 0, received -0.001"]),
    "NaN learning rate": (["train-teacher", "--learning-rate", "nan"], ["learning_rate must be a finite number > 0, received nan"]),
    "0 steps per epoch": (["train-teacher", "--steps-per-epoch", "0"], ["steps_per_epoch must be an integer >= 1, received 0"]),
    "validation fraction": (["train-teacher", "--validation-fraction", "0.9"], ["validation_fraction must be a finite number in (0, 0.5], received 0.9"]),
    "growing learning rate": (["train-teacher", "--lr-decay-factor", "2"], ["lr_decay_factor must be a finite number in (0, 1], received 2.0"]),
    "too few items for R@8": (["train-teacher", "--max-eval-items", "5"], ["max_eval_items must be an integer >= 9, received 5"]),
    "decay epochs backwards": (["train-teacher", "--lr-decay-epochs", "30", "20"], ["lr_decay_epochs must be increasing epochs"]),
    "grey images for resnet50": (["train-teacher", "--backbone", "resnet50", "--image-size", "32"], ["backbone resnet50 needs channels=3"]),
    "images too small": (["train-teacher", "--backbone", "resnet50", "--channels", "3"], ["backbone resnet50 needs image_size >= 32, received 28"]),
    "resize below crop": (["train-teacher", "--resize-size", "20"], ["resize_size (20) must be >= image_size (28)"]),
    "missing weights file": (["train-teacher", "--weights", "missing.weights.h5"], ["weights must be none, imagenet or the path of a weights file", "missing.weights.h5 is not a file"]),
    "missing manual_dir": (["train-teacher", "--manual-dir", "no-such-folder"], ["manual_dir no-such-folder is not a folder"]),
    "small_cnn has no ImageNet weights": (["train-teacher", "--weights", "imagenet"], ["backbone small_cnn has no ImageNet weights"]),
    # Settings that do not fit together.
    "triplet teacher with one image per class": (["train-teacher", "--samples-per-class", "1"], ["the triplet loss needs samples_per_class >= 2"]),
    "more classes per batch than the split has": (["train-teacher", "--classes-per-batch", "6"], ["classes_per_batch must be <= 5", "fashion_mnist's training split"]),
    "too few train classes for P": (["train-teacher", "--train-classes", "0", "1", "2"], ["classes_per_batch must be <= 3, the classes of train_classes, received 5; lower --classes-per-batch or give more --train-classes"]),
    "compare of too few train classes for P": (["compare", "--train-classes", "0", "1", "2"], ["classes_per_batch must be <= 3", "lower the --config key classes_per_batch or give more --train-classes"]),
    "compare of ImageNet weights for small_cnn": (["compare", "--config", "imagenet_small_cnn.yaml"], ["backbone small_cnn has no ImageNet weights; use the --config key weights: null or a file"]),
    "compare on CIFAR that is not prepared": (["compare", "--task", "classification", "--quick", "--seeds", "0", "--methods", "ce", "--config", "cifar_missing.yaml"], ["cifar10 (cifar10) is not prepared", "no-tfds-data"]),
    "teacher with RKD": (["train-teacher", "--distance-weight", "1"], ["a teacher trains with the triplet loss alone", "distillation is for distill"]),
    "teacher without its loss": (["train-teacher", "--triplet-weight", "0"], ["triplet_weight must be > 0"]),
    "student with nothing to learn": (["distill", "--teacher", "rgb.keras", "--distance-weight", "0", "--angle-weight", "0"], ["nothing to train"]),
    "prototypical loss without queries": (["train-teacher", "--triplet-weight", "0", "--prototypical-weight", "1", "--shots", "12"], ["the prototypical loss needs samples_per_class > shots", "received samples_per_class 12"]),
    "tune of the prototypical loss": (["tune", "--teacher", "rgb.keras", "--triplet-weight", "0", "--prototypical-weight", "1"], ["it does not train with the prototypical loss"]),
    "two losses of the labels": (["train-teacher", "--prototypical-weight", "1"], ["give triplet_weight or prototypical_weight, not both (received 1.0 and 1.0)"]),
    "few-shot compare on too few classes": (["compare", "--task", "few_shot", "--dataset", "fashion_mnist"], ["compare --task few_shot draws 20-way episodes from the classes unseen in training, and fashion_mnist has 5 of them", "--dataset glyphs"]),
    # Config files.
    "unknown config key": (["train-teacher", "--config", "unknown_key.json"], ["config file unknown_key.json: unknown config keys learning_rat; known keys: task, dataset"]),
    "word in a config file": (["train-teacher", "--config", "word.yaml"], ["config file word.yaml: epochs must be an integer >= 1, received 'two'"]),
    "broken YAML": (["train-teacher", "--config", "broken.yaml"], ["config file broken.yaml is not valid JSON or YAML"]),
    "fractional decay epoch": (["train-teacher", "--config", "float_epochs.yaml"], ["each of lr_decay_epochs must be an integer >= 1, received 1.5"]),
    "YAML that would run code": (["train-teacher", "--config", "unsafe.yaml"], ["config file unsafe.yaml is not valid JSON or YAML"]),
    "config file of a list": (["train-teacher", "--config", "list.yaml"], ["config file list.yaml must hold a mapping"]),
    "missing config file": (["train-teacher", "--config", "missing.yaml"], ["config file missing.yaml does not exist"]),
    "negative rate written 1e-3": (["train-teacher", "--config", "negative_rate.yaml"], ["learning_rate must be a finite number > 0, received -0.001"]),
    "quoted boolean": (["train-teacher", "--config", "quoted_bool.yaml"], ["augment must be true or false, received 'yes'"]),
    "a YAML key given twice": (["train-teacher", "--config", "twice.yaml"], ["config file twice.yaml: key epochs is given twice (lines 1 and 3); keep one."]),
    "a JSON key given twice": (["train-teacher", "--config", "twice.json"], ["config file twice.json: key epochs is given twice (lines 1 and 1); keep one."]),
    # Model files.
    "missing teacher": (["distill", "--teacher", "missing.keras"], ["teacher file missing.keras does not exist"]),
    "empty teacher": (["distill", "--teacher", "empty.keras"], ["teacher file empty.keras is empty"]),
    "truncated teacher": (["distill", "--teacher", "truncated.keras"], ["teacher file truncated.keras is not a .keras archive", "truncated?"]),
    "teacher of another format": (["distill", "--teacher", "weights.weights.h5"], ["teacher file weights.weights.h5 is not a .keras archive"]),
    "folder as teacher": (["distill", "--teacher", "folder.keras"], ["teacher folder.keras is a folder, not a .keras model file"]),
    "zip that is no model": (["evaluate", "--model", "no_config.keras"], ["model file no_config.keras is a zip file but not a .keras model"]),
    "missing model to export": (["export", "--model", "missing.keras", "--output", "out"], ["model file missing.keras does not exist"]),
    "truncated model to export": (["export", "--model", "truncated.keras", "--output", "out"], ["model file truncated.keras is not a .keras archive"]),
    "teacher of other images": (["distill", "--teacher", "rgb.keras"], ["the teacher takes images of shape (16, 16, 3) but the data gives (28, 28, 1)"]),
    "classifier to evaluate": (["evaluate", "--model", "classifier.keras", "--output", "m.json"], ["the model classifier.keras is a classifier", "evaluate measures the retrieval (Recall@K, MAP@R) of embedding models", "compare --task classification"]),
    "model of other images": (["evaluate", "--model", "rgb.keras", "--image-size", "16"], ["the model takes images of shape (16, 16, 3) but the data gives (16, 16, 1)", "--channels 1"]),
    # Output paths, checked before the work.
    "evaluate of a training flag": (["evaluate", "--model", "rgb.keras", "--epochs", "3"], ["rkd-keras evaluate: error: evaluate does not read --epochs: it measures the --model as it was trained", "leave --epochs out"]),
    "evaluate of a training switch": (["evaluate", "--model", "rgb.keras", "--no-augment"], ["evaluate does not read --no-augment", "--dataset, --train-classes, --image-size"]),
    "evaluate of validation_fraction on test": (["evaluate", "--model", "rgb.keras", "--validation-fraction", "0.2"], ["--validation-fraction chooses the images of --split validation; the test split does not read it"]),
    "output is a folder": (["evaluate", "--model", "rgb.keras", "--output", "notes"], ["--output notes is a folder"]),
    "output in a missing folder": (["evaluate", "--model", "rgb.keras", "--output", "no/such/m.json"], ["the folder no/such does not exist"]),
    "output where nothing can be written": (["evaluate", "--model", "rgb.keras", "--output", "/sys/metrics.json"], ["cannot write in /sys"]),
    "export into a missing folder": (["export", "--model", "rgb.keras", "--output", "no/such/student"], ["cannot export to no/such/student", "no/such does not exist"]),
    "export where nothing can be written": (["export", "--model", "rgb.keras", "--output", "/sys/student"], ["cannot write in /sys: Permission denied"]),
    "export over a folder that is no SavedModel": (["export", "--model", "rgb.keras", "--output", "notes"], ["notes exists and is not a SavedModel folder (no saved_model.pb)", "choose another path"]),
    "export over a plain file": (["export", "--model", "rgb.keras", "--output", "unknown_key.json"], ["unknown_key.json exists and is not a SavedModel folder", "choose another path"]),
    "overwrite of what is not a SavedModel": (["export", "--model", "rgb.keras", "--output", "notes", "--overwrite"], ["notes exists and is not a SavedModel folder (no saved_model.pb)", "not replaced"]),
    "quantize of an onnx export": (["export", "--model", "rgb.keras", "--output", "s.onnx", "--format", "onnx", "--quantize", "int8"], ["quantize='int8' applies to format='litert' only, not 'onnx'"]),
    "onnx export to a .tflite": (["export", "--model", "rgb.keras", "--output", "s.tflite", "--format", "onnx"], ["onnx is written to a .onnx file, but s.tflite ends in .tflite"]),
    "onnx export over a file that is no ONNX": (["export", "--model", "rgb.keras", "--output", "notes.onnx", "--format", "onnx", "--overwrite"], ["notes.onnx exists and is not an ONNX file, so it is not replaced"]),
    "quantize of an openvino export": (["export", "--model", "rgb.keras", "--output", "s.xml", "--format", "openvino", "--quantize", "int8"], ["quantize='int8' is not offered for format='openvino'", "NNCF"]),
    "openvino export over an xml that is no model": (["export", "--model", "rgb.keras", "--output", "notes.xml", "--format", "openvino", "--overwrite"], ["notes.xml exists and is not an OpenVINO IR model (.xml), so it is not replaced"]),
    "openvino export over a stray bin": (["export", "--model", "rgb.keras", "--output", "stray.xml", "--format", "openvino", "--overwrite"], ["stray.bin exists and is not the weights of an OpenVINO model at stray.xml, so it is not replaced"]),
    "int8 of a model the data does not fit": (["export", "--model", "rgb.keras", "--output", "s.tflite", "--format", "litert", "--quantize", "int8"], ["the model takes images of shape (16, 16, 3) but the data gives (28, 28, 1)", "--quantize measures Recall@1 on the run's test images"]),
    # Settings the dataset does not read (a folder as --data-dir trained on Fashion-MNIST in silence).
    "data-dir of fashion_mnist": (["distill", "--teacher", "rgb.keras", "--data-dir", "notes"], ["--data-dir is read only by cub200, cars196, sop, cifar10, cifar100; fashion_mnist does not read it"]),
    "manual-dir of fashion_mnist": (["train-teacher", "--manual-dir", "notes"], ["--manual-dir is read only by cub200"]),
    "data_dir key of fashion_mnist": (["train-teacher", "--config", "fashion_data_dir.yaml"], ["config file fashion_data_dir.yaml: --data-dir is read only by"]),
    "data_dir key in compare": (["compare", "--quick", "--seeds", "0", "--methods", "triplet", "--config", "fashion_data_dir.yaml"], ["the --config key data_dir is read only by", "fashion_mnist does not read it"]),
    # Run folders.
    "resume of no run": (["train-teacher", "--resume"], ["cannot resume runs/teacher: there is no such run"]),
    "runs-dir is a file": (["train-teacher", "--runs-dir", "rgb.keras"], ["--runs-dir rgb.keras is a file, not a folder"]),
    "compare over a single run": (["compare", "--resume", "--name", "finished-teacher", "--quick", "--seeds", "0", "--methods", "triplet"], ["runs/finished-teacher holds a single run (train-teacher, distill or tune), not a comparison", "choose another --name"]),
    "compare over a single run, no resume": (["compare", "--name", "finished-teacher", "--quick", "--seeds", "0", "--methods", "triplet"], ["runs/finished-teacher holds a single run", "not a comparison"]),
    "single run over a comparison": (["train-teacher", "--resume", "--name", "finished-compare"], ["runs/finished-compare holds a comparison (rkd-keras compare), not a single run", "continued by rkd-keras compare with --resume"]),
    "demo over a comparison": (["demo", "--resume", "--name", "finished-compare"], ["runs/finished-compare holds a comparison", "not the demo's runs"]),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_refuses_with_one_line_and_writes_nothing(case, workdir, capsys):
    argv, words = CLI_CASES[case]
    err = _cli_error(argv, workdir, capsys)
    for word in words:
        assert word in err, err


def test_export_over_what_is_no_savedmodel_does_not_suggest_overwrite(workdir, capsys):
    # --overwrite would be refused next: only a SavedModel is ever replaced.
    for output in ("notes", "unknown_key.json"):
        err = _cli_error(["export", "--model", "rgb.keras", "--output", output], workdir, capsys)
        assert "overwrite=True" not in err and "--overwrite" not in err, err


def test_imagenet_weights_need_download_unless_cached(workdir, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(workdir / "keras-home"))  # an empty cache
    argv = ["train-teacher", "--backbone", "resnet50", "--channels", "3", "--image-size", "32", "--weights", "imagenet"]
    err = _cli_error(argv, workdir, capsys)
    assert "the ImageNet weights of resnet50 are not in Keras's cache" in err
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in err
    assert "--download" in err and "--weights PATH" in err


def test_compare_names_its_config_keys_where_other_commands_have_flags(workdir, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(workdir / "keras-home"))  # an empty cache
    argv = ["compare", "--quick", "--seeds", "0", "--methods", "triplet", "--config", "imagenet_resnet50.yaml"]
    err = _cli_error(argv, workdir, capsys)  # and runs/compare-metric is not written
    assert "the ImageNet weights of resnet50 are not in Keras's cache" in err
    assert "the --config key download: true" in err
    assert "the --config key weights: PATH" in err and "the --config key weights: null" in err
    assert "--download" not in err and "--weights" not in err, err


def test_presets_that_use_imagenet_weights_need_download(workdir, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(workdir / "keras-home"))
    err = _cli_error(["train-teacher", "--preset", "cub200", "--image-size", "32"], workdir, capsys)
    assert "ImageNet weights of resnet50 are not in Keras's cache" in err and "--download" in err


def test_an_unprepared_dataset_is_refused_naming_the_flags_or_compares_config_keys(workdir, capsys, monkeypatch):
    monkeypatch.setattr(tfds, "builder", UnpreparedBuilder)
    (workdir / "cub.yaml").write_text("dataset: cub200\ndata_dir: tfds-data\n")
    argv = ["train-teacher", "--dataset", "cub200", "--data-dir", "tfds-data"]
    missing = _cli_error(argv, workdir, capsys)
    assert "cub200 (caltech_birds2011) is not prepared in tfds-data/caltech_birds2011/1.0.0. Pass --download to let" in missing
    assert "put CUB_200_2011.tgz in a folder FOLDER and pass --manual-dir FOLDER with --download." in missing
    failed = _cli_error([*argv, "--download"], workdir, capsys)
    assert "could not be prepared in tfds-data/caltech_birds2011/1.0.0: no network (mocked)." in failed
    assert failed.endswith("put CUB_200_2011.tgz in a folder FOLDER and pass --manual-dir FOLDER."), failed
    compare = _cli_error(["compare", "--quick", "--seeds", "0", "--methods", "triplet", "--config", "cub.yaml"], workdir, capsys)
    assert "is not prepared in tfds-data/caltech_birds2011/1.0.0. Pass the --config key download: true to let" in compare
    assert "pass the --config key manual_dir: FOLDER with the --config key download: true." in compare
    assert "--download" not in compare and "--manual-dir" not in compare, compare
    for err in (missing, failed, compare):
        assert "download=True" not in err and "manual_dir=" not in err, err


def test_command_line_refuses_another_keras_backend(workdir, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    err = _cli_error(["train-teacher"], workdir, capsys)
    assert "the command line runs on the TensorFlow backend, but KERAS_BACKEND=jax" in err


ROWS = np.arange(40, dtype=np.float32).reshape(10, 4)
LABELS = np.repeat(np.arange(5), 2)


def _with_nan(rows):
    embeddings = ROWS.copy()
    embeddings[rows] = np.nan
    return embeddings


def _with_inf(row):
    embeddings = ROWS.copy()
    embeddings[row, 0] = np.inf
    return embeddings


def _batches(**kwargs):
    images = tf.data.Dataset.from_tensor_slices((ROWS, LABELS))
    return data.pk_batches(images, **{"classes_per_batch": 2, "samples_per_class": 2, **kwargs})


API_CASES = {
    # Metrics: non-finite embeddings and K.
    "recall of NaN embeddings": (lambda: recall_at_k(_with_nan(slice(None)), LABELS), ValueError, ["10 of 10 embedding rows hold NaN or Inf"]),
    "recall with one Inf row": (lambda: recall_at_k(_with_inf(3), LABELS), ValueError, ["1 of 10 embedding rows hold NaN or Inf"]),
    "MAP@R of NaN embeddings": (lambda: map_at_r(_with_nan([0, 1]), LABELS), ValueError, ["2 of 10 embedding rows"]),
    "R-precision of NaN embeddings": (lambda: r_precision(_with_nan([5]), LABELS), ValueError, ["1 of 10 embedding rows"]),
    "fractional K": (lambda: recall_at_k(ROWS, LABELS, ks=(1.5,)), ValueError, ["Every K must be an integer in [1, N - 1] = [1, 9]", "[1.5]"]),
    "boolean K": (lambda: recall_at_k(ROWS, LABELS, ks=(True,)), ValueError, ["Every K must be an integer", "[True]"]),
    "K of N": (lambda: recall_at_k(ROWS, LABELS, ks=(1, 10)), ValueError, ["[1, N - 1] = [1, 9]"]),
    "no K": (lambda: recall_at_k(ROWS, LABELS, ks=()), ValueError, ["ks must hold at least one K"]),
    "fractional K of the callback": (lambda: RetrievalRecall((ROWS, LABELS), ks=(2.5,)), ValueError, ["Every K must be an integer"]),
    "unknown metric": (lambda: RetrievalRecall((ROWS, LABELS), metric="manhattan"), ValueError, ["metric must be one of euclidean, cosine; received 'manhattan'"]),
    "zero chunk size": (lambda: map_at_r(ROWS, LABELS, batch_size=0), ValueError, ["batch_size must be an integer >= 1, received 0"]),
    # Data.
    "0 batches an epoch": (lambda: _batches(num_batches=0), ValueError, ["num_batches must be an integer >= 1, received 0"]),
    "fractional P": (lambda: _batches(classes_per_batch=2.5), ValueError, ["classes_per_batch must be an integer >= 1, received 2.5"]),
    "negative seed": (lambda: _batches(seed=-1), ValueError, ["seed must be an integer >= 0, received -1"]),
    "P above the classes": (lambda: _batches(classes_per_batch=6), ValueError, ["pk_batches needs at least classes_per_batch=6 classes, but the dataset has 5"]),
    "batched dataset for pk_batches": (lambda: data.pk_batches(tf.data.Dataset.from_tensor_slices((ROWS, LABELS)).batch(4), 2, 2), ValueError, ["pk_batches samples single (x, label) examples, but this dataset's labels have shape (None,): it is already batched. Unbatch it first (dataset.unbatch()), or pass the dataset before its .batch()."]),
    "dict elements for pk_batches": (lambda: data.pk_batches(tf.data.Dataset.from_tensor_slices({"image": ROWS, "label": LABELS}), 2, 2), ValueError, ["pk_batches needs a dataset of (x, label) pairs", "dataset.map(lambda example: (example['image'], example['label']))"]),
    "data_dir of fashion_mnist": (lambda: data.load_dataset("fashion_mnist", "train", data_dir="notes"), ValueError, ["data_dir is read only by cub200, cars196, sop, cifar10, cifar100; fashion_mnist does not read it"]),
    "path of a tfds dataset": (lambda: data.load_dataset("cub200", "train", path="notes"), ValueError, ["path is read only by fashion_mnist, folder; cub200 does not read it"]),
    "image size 0": (lambda: data.load_dataset("fashion_mnist", "train", image_size=0), ValueError, ["image_size must be an integer >= 1, received 0"]),
    "no classes": (lambda: data.load_dataset("fashion_mnist", "train", classes=[]), ValueError, ["classes must hold at least one class, received none."]),
    "resize below crop": (lambda: data.load_dataset("fashion_mnist", "test", image_size=28, resize_size=20), ValueError, ["resize_size must be an integer >= 28, received 20"]),
    "unknown dataset": (lambda: data.num_classes("imagenet", "train"), ValueError, ["dataset must be one of cub200, cars196, sop, fashion_mnist, cifar10, cifar100, folder, glyphs; received 'imagenet'"]),
    # Models.
    "images too small for resnet50": (lambda: embedding_model("resnet50", 8, input_shape=(16, 16, 3)), ValueError, ["resnet50 needs images of at least 32×32 pixels"]),
    "missing weights file": (lambda: embedding_model("small_cnn", 8, input_shape=(8, 8, 1), weights="missing.weights.h5"), FileNotFoundError, ["weights file missing.weights.h5 does not exist"]),
    "embedding of width 0": (lambda: embedding_model("small_cnn", 0, input_shape=(8, 8, 1)), ValueError, ["embedding_dim must be an integer >= 1, received 0"]),
    # Presets and settings.
    "unknown preset": (lambda: presets.get("imagenet", "teacher"), ValueError, ["Unknown preset 'imagenet'; choose one of cub200, cars196, sop, demo"]),
    "negative learning rate in RunConfig": (lambda: RunConfig(learning_rate=-1.0), ConfigError, ["learning_rate must be a finite number > 0, received -1.0"]),
}


@pytest.mark.parametrize("case", API_CASES)
def test_api_refuses_with_the_exact_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, error, words = API_CASES[case]
    with pytest.raises(error) as raised:
        call()
    assert type(raised.value) is error
    for word in words:
        assert word in str(raised.value), str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_imagenet_weights_in_the_api_need_download_unless_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotAvailableError, match="not in Keras's cache .* Pass download=True"):
        embedding_model("mobilenet_v2", 8, input_shape=(96, 96, 3), weights="imagenet")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def student():
    return embedding_model("small_cnn", 4, input_shape=(8, 8, 1), width=2)


def test_export_into_a_missing_folder_leaves_nothing(student, tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist; create it first"):
        export_student(student, tmp_path / "missing" / "student")
    assert list(tmp_path.iterdir()) == []


def test_export_where_nothing_can_be_written_is_refused_before_the_work(student, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(keras.Model, "export", never)
    with pytest.raises(PermissionError, match="cannot write in /sys: Permission denied"):
        export_student(student, "/sys/student")


def test_overwrite_replaces_only_a_savedmodel(student, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "file.txt").write_text("keep me too")
    before = listing(tmp_path)
    for path in (mine, tmp_path / "file.txt"):
        with pytest.raises(FileExistsError, match="is not a SavedModel folder .* not replaced even with overwrite"):
            export_student(student, path, overwrite=True)
    assert listing(tmp_path) == before
    export_student(student, tmp_path / "student")
    export_student(student, tmp_path / "student", overwrite=True)  # a SavedModel: replaced
    assert (tmp_path / "student" / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "mine", "student"]


def test_settings_from_a_saved_config_are_checked_too(tmp_path):
    saved = {**json.loads(json.dumps(dataclasses.asdict(RunConfig()))), "epochs": 0}
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1, received 0"):
        RunConfig(**saved)
