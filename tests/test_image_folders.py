"""Your own images: a folder of one subfolder per class, through `load_dataset("folder", ...)` and the CLI."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

import readme_examples
import rkd_keras
from conftest import listing
from rkd_keras import data, image_folders
from rkd_keras.cli import main
from rkd_keras.cli.config import ConfigError, resolve_config
from rkd_keras.cli.parser import build_parser

# Fashion-MNIST's classes as a user's folder names them; sorted, their labels are not Fashion-MNIST's.
NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
SORTED = sorted(NAMES)
PER_CLASS = 12
# Tiny models and a few steps: what is checked is the data's path through every command, not learning.
QUICK = [
    "--epochs", "1", "--steps-per-epoch", "2", "--classes-per-batch", "3", "--samples-per-class", "2", "--width", "4",
    "--embedding-dim", "8", "--validation-fraction", "0.25", "--max-train-items", "none", "--max-eval-items", "none",
    "--quiet",
]


def write_folder(root, per_class=PER_CLASS, names=NAMES):
    """`per_class` grey 28×28 PNGs of each Fashion-MNIST class (from its training file) under `root/NAME/`.

    Returns `{relative path: image}` of what was written.
    """
    images, labels = data._fashion_mnist(None)["train"]
    written = {}
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            path = f"{name}/{index:05d}.png"
            (root / path).write_bytes(tf.io.encode_png(images[index][..., None]).numpy())
            written[path] = images[index]
    return written


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    written = write_folder(root)
    (root / "README.txt").write_text("not an image")
    (root / "bag" / ".DS_Store").write_bytes(b"\0")
    return root, written


def _items(dataset):
    return [(image, int(label)) for image, label in dataset.as_numpy_iterator()]


def test_metric_splits_are_the_sorted_class_halves_and_keep_every_pixel(folder):
    root, written = folder
    options = dict(path=str(root), image_size=28, resize_size=28, augment=False, channels=1)
    train = data.load_dataset("folder", "train", **options)
    test = data.load_dataset("folder", "test", **options)
    assert train.class_names == SORTED
    train_items, test_items = _items(train), _items(test)
    assert sorted({label for _, label in train_items}) == [0, 1, 2, 3, 4]  # ankle_boot, bag, coat, dress, pullover
    assert sorted({label for _, label in test_items}) == [5, 6, 7, 8, 9]
    assert (len(train_items), len(test_items)) == (5 * PER_CLASS, 5 * PER_CLASS)
    # 28×28 grey PNGs, not resized: the decoded image is the source array, every pixel.
    sources = {(SORTED.index(path.split("/")[0]), image.tobytes()) for path, image in written.items()}
    assert {(label, image[..., 0].astype(np.uint8).tobytes()) for image, label in train_items + test_items} == sources
    assert data.num_classes("folder", "test", path=str(root)) == 5


def test_hidden_and_other_files_are_skipped_and_counted_once(tmp_path):
    write_folder(tmp_path, per_class=2, names=("a", "b"))
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "b" / "labels.csv").write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scans = [image_folders.scan(tmp_path) for _ in range(2)]
    assert [str(warning.message) for warning in caught] == [
        f"image folder {tmp_path}: skipped 3 files that are hidden or not PNG, JPEG, BMP or GIF images."
    ]
    assert scans[0].files == scans[1].files and sorted(scans[0].files) == ["a/00001.png", "a/00002.png", "b/00016.png", "b/00021.png"]


def test_validation_holds_out_training_images_of_every_class_in_a_fixed_order(folder):
    root, _ = folder
    options = dict(path=str(root), image_size=28, channels=1, validation_fraction=0.25)
    train, validation = (_items(data.load_dataset("folder", split, **options)) for split in ("train", "validation"))
    assert (len(train), len(validation)) == (45, 15)  # ⌈60 · 0.25⌉ held out
    assert not {image.tobytes() for image, _ in train} & {image.tobytes() for image, _ in validation}
    # The fixed shuffled order spreads the hold-out over the classes (alphabetical order would give 3 of them).
    assert len({label for _, label in validation}) == 5
    again = _items(data.load_dataset("folder", "validation", **options))
    assert [image.tobytes() for image, _ in again] == [image.tobytes() for image, _ in validation]


def test_classes_by_name_and_classification_holds_out_a_fifth_of_each_class(folder):
    root, _ = folder
    chosen = _items(data.load_dataset("folder", "test", path=str(root), image_size=28, channels=1, classes=["sandal", 0]))
    assert sorted({label for _, label in chosen}) == [0, SORTED.index("sandal")]
    options = dict(path=str(root), image_size=32, channels=3, task="classification")
    train, test = (_items(data.load_dataset("folder", split, **options)) for split in ("train", "test"))
    counts = np.bincount([label for _, label in test], minlength=10)
    assert counts.tolist() == [3] * 10  # ⌈12 · 0.2⌉ of each class
    assert len(train) == 10 * 9 and train[0][0].shape == (32, 32, 3)
    assert not {image.tobytes() for image, _ in train} & {image.tobytes() for image, _ in test}
    with pytest.raises(ValueError, match=r"classes \['boots'\] are not classes of the image folder"):
        data.load_dataset("folder", "test", path=str(root), classes=["boots"])


def test_paths_sampled_by_pk_batches_and_decoded_after_give_the_batches_of_the_decoded_images(folder):
    root, _ = folder
    sizes = dict(image_size=24, resize_size=28, augment=False, channels=1)
    options = dict(path=str(root), validation_fraction=0.25, **sizes)
    paths = data.load_dataset("folder", "train", decode=False, **options)
    assert paths.element_spec[0].dtype == tf.string and paths.class_names == SORTED
    decoded = data.pk_batches(data.load_dataset("folder", "train", **options), 3, 4, seed=0, num_batches=4)
    streamed = data.pk_batches(paths, 3, 4, seed=0, num_batches=4, map_fn=data.folder_image_loader(**sizes))
    for (images, labels), (expected_images, expected_labels) in zip(streamed, decoded, strict=True):
        assert images.shape == (12, 24, 24, 1)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_decode_false_is_refused_for_a_named_dataset_which_has_no_image_files():
    with pytest.raises(ValueError, match="decode=False gives the paths of a folder's images; the dataset glyphs has"):
        data.load_dataset("glyphs", "train", decode=False)


def test_a_teacher_on_a_folder_trains_on_the_batches_of_its_decoded_images(folder):
    from rkd_keras.cli import training

    root, _ = folder
    overrides = {"dataset": "folder", "dataset_path": str(root), "classes_per_batch": 3, "samples_per_class": 2,
                 "steps_per_epoch": 3, "max_train_items": None, "validation_fraction": 0.25}
    config = resolve_config("teacher", overrides=overrides)
    expected = data.pk_batches(training.data(config, "train"), 3, 2, seed=config.seed, num_batches=3)
    for (images, labels), (expected_images, expected_labels) in zip(training._batches(config), expected, strict=True):
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_images_of_other_sizes_formats_and_colours_are_resized_to_one_shape(tmp_path):
    rng = np.random.default_rng(0)
    encoders = {
        "a.png": lambda image: tf.io.encode_png(image),
        "b.jpg": lambda image: tf.io.encode_jpeg(image),
    }
    for name in ("red", "blue"):
        (tmp_path / name).mkdir()
        for shape, (file, encode) in zip([(40, 30, 3), (17, 23, 1)], encoders.items()):
            (tmp_path / name / file).write_bytes(encode(rng.integers(0, 255, shape, dtype=np.uint8)).numpy())
    from PIL import Image  # BMP and GIF: tensorflow encodes neither

    Image.fromarray(rng.integers(0, 255, (9, 50, 3), dtype=np.uint8)).save(tmp_path / "red" / "c.bmp")
    Image.fromarray(rng.integers(0, 255, (31, 12, 3), dtype=np.uint8)).save(tmp_path / "blue" / "d.gif")
    for channels in (1, 3):
        items = _items(data.load_dataset("folder", "train", path=str(tmp_path), task="classification", image_size=24, channels=channels))
        assert len(items) == 4 and {image.shape for image, _ in items} == {(24, 24, channels)}


def test_cli_trains_distills_and_evaluates_on_a_folder(folder, tmp_path, capsys):
    root, _ = folder
    source = ["--dataset", "folder", "--dataset-path", str(root)]
    runs = ["--runs-dir", str(tmp_path)]
    assert main(["train-teacher", *source, *QUICK, *runs, "--name", "t"]) == 0
    teacher = tmp_path / "t" / "best.keras"
    assert main(["distill", "--teacher", str(teacher), *source, *QUICK, *runs, "--name", "s"]) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["dataset_path"] == str(root)
    output = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tmp_path / "s" / "best.keras"), *source, "--max-eval-items", "none", "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    assert metrics["items"] == 5 * PER_CLASS and 0 <= metrics["recall_at_1"] <= 1  # the 5 unseen classes
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["items"] == 5 * PER_CLASS


def test_a_class_given_by_its_name_and_its_label_is_one_class_given_twice(folder):
    root, _ = folder
    with pytest.raises(ValueError, match=r"^classes lists \[5\] more than once; give each class once\.$"):
        data.load_dataset("folder", "test", path=str(root), image_size=28, channels=1, classes=["sandal", 5])
    with pytest.raises(ConfigError, match=r"train_classes lists \[5\] more than once; give each class once\.$"):
        resolve_config("teacher", overrides={"dataset": "folder", "dataset_path": str(root), "train_classes": ["sandal", 5, 1]})


def test_train_classes_by_name_are_saved_as_labels_and_the_others_test(folder):
    root, _ = folder
    given = ["sandal", "shirt", 7, "trouser"]  # 7: sneaker
    config = resolve_config("teacher", overrides={"dataset": "folder", "dataset_path": str(root), "train_classes": given})
    assert config.train_classes == [SORTED.index(name) for name in ("sandal", "shirt", "sneaker", "trouser")] == [5, 6, 7, 9]
    assert config.test_classes() == [0, 1, 2, 3, 4, 8] and config.training_classes() == 4
    assert build_parser().parse_args(["train-teacher", "--train-classes", "sandal", "3"]).train_classes == ["sandal", 3]
    with pytest.raises(ConfigError, match=r"train_classes \['boots'\] are not classes of the image folder"):
        resolve_config("teacher", overrides={"dataset": "folder", "dataset_path": str(root), "train_classes": ["boots", 1]})
    with pytest.raises(ConfigError, match=r"train_classes \['sandal'\] are class names, which only an image folder has"):
        resolve_config("teacher", overrides={"train_classes": ["sandal", 1]})


@pytest.mark.slow
def test_compare_and_tune_read_the_folder(folder, tmp_path, capsys):
    root, _ = folder
    source = ["--dataset", "folder", "--dataset-path", str(root)]
    settings = tmp_path / "quick.yaml"
    settings.write_text(
        "classes_per_batch: 3\nsamples_per_class: 2\nvalidation_fraction: 0.25\nmax_eval_items: null\nwidth: 4\n"
    )
    argv = ["compare", "--quick", "--seeds", "0", "--methods", "rkd_da", *source, "--config", str(settings)]
    assert main([*argv, "--runs-dir", str(tmp_path), "--name", "c"]) == 0
    table = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert (table["dataset"], table["train_classes"], table["test_classes"]) == ("folder", [0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert table["test_items"] == 5 * PER_CLASS
    teacher = tmp_path / "c" / "seed0" / "teacher" / "best.keras"
    tune = ["tune", "--teacher", str(teacher), "--max-trials", "1", *source, *QUICK, "--runs-dir", str(tmp_path)]
    assert main(tune) == 0
    assert json.loads((tmp_path / "tune" / "metrics.json").read_text())["items"] == 5 * PER_CLASS


def _refused(argv, where, capsys):
    """The command's one error line, after checking exit status 2 and that nothing under `where` changed."""
    before = listing(where)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rkd-keras"), err
    assert listing(where) == before
    return err


def _bad_folder(case, root):
    """A folder of 8 classes with one thing wrong; returns the CLI arguments and the words of its error."""
    if case == "missing folder":
        return ["--dataset-path", str(root / "nowhere")], ["image folder", "nowhere does not exist"]
    if case == "no dataset path":
        return [], ["dataset folder needs --dataset-path DIR"]
    root.mkdir()
    if case == "empty folder":
        return ["--dataset-path", str(root)], ["holds no class folders"]
    write_folder(root, per_class=4, names=NAMES[:8])
    if case == "class folder without images":
        (root / "empty").mkdir()
        (root / "empty" / "notes.txt").write_text("no images here")
        return ["--dataset-path", str(root)], ["the class folder empty/ holds no images"]
    if case == "class of one image":
        for file in sorted((root / "coat").iterdir())[1:]:
            file.unlink()
        return ["--dataset-path", str(root)], ["the training class coat has 1 image", "need at least 2"]
    if case == "fewer classes than P":
        return ["--dataset-path", str(root), "--classes-per-batch", "5"], [
            "classes_per_batch must be <= 4", f"the image folder {root}'s training split"
        ]
    # trouser: a test class (the training classes are coat, dress, pullover, sandal), read after training.
    bad = root / "trouser" / "broken.png"
    good = next((root / "coat").iterdir()).read_bytes()
    if case == "corrupt image":
        bad.write_bytes(b"this is no PNG")
        return ["--dataset-path", str(root)], [f"image folder {root}: trouser/broken.png is not a readable image"]
    if case == "truncated image":
        bad.write_bytes(good[: len(good) // 2])
        return ["--dataset-path", str(root)], ["trouser/broken.png is not a readable image", "Invalid PNG data"]
    if case == "unreadable file":
        bad.symlink_to(root / "gone.png")  # a dangling link: unreadable to root too, unlike chmod 000
        return ["--dataset-path", str(root)], ["trouser/broken.png cannot be read (No such file or directory)"]
    raise AssertionError(case)


BAD_FOLDERS = (
    "missing folder", "no dataset path", "empty folder", "class folder without images", "class of one image",
    "fewer classes than P", "corrupt image", "truncated image", "unreadable file",
)


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_folder_is_refused_in_one_line_naming_the_file_and_nothing_is_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments, words = _bad_folder(case, tmp_path / "images")
    (tmp_path / "runs").mkdir()
    before = sorted(os.listdir(tmp_path))
    # The run folder would be written in runs/ (listing the images would follow the dangling link).
    err = _refused(["train-teacher", "--dataset", "folder", *QUICK[:-1], *arguments], tmp_path / "runs", capsys)
    for word in words:
        assert word in err, err
    assert sorted(os.listdir(tmp_path)) == before and not os.listdir(tmp_path / "runs")


def test_the_docs_own_images_example_runs_as_written(tmp_path, monkeypatch):
    example = next(e for e in readme_examples.EXAMPLES if e["story"] == "folder")
    code = readme_examples.example_code(readme_examples.page_blocks(example), example)
    write_folder(tmp_path / "my_images", per_class=3)
    monkeypatch.chdir(tmp_path)
    namespace = {"rkd_keras": rkd_keras}
    exec(code, namespace)
    train, test = namespace["train"], namespace["test"]
    assert train.class_names == SORTED and train.element_spec[0].shape == (224, 224, 3)
    labels = np.concatenate([batch_labels for _, batch_labels in test.as_numpy_iterator()])
    assert sorted(set(labels.tolist())) == [5, 6, 7, 8, 9] and len(labels) == 15
