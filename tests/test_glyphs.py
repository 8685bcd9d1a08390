"""Glyphs: generated, deterministic, many classes, split as the paper's datasets, and hard for raw pixels."""

import hashlib
import json

import numpy as np
import pytest

from rkd_keras import data, embed, glyphs, load_dataset, recall_at_k
from rkd_keras.cli import main

# Measured (README, "Glyphs"): raw pixels R@1 27.6 on the unseen classes, the trained demo teacher about 20 points
# more. The bounds leave room for generator changes that keep glyphs hard; a change that makes raw pixels
# retrieve well breaks them, and the README's numbers must be measured again.
RAW_PIXEL_RECALL_BOUND = 0.35
UNTRAINED_STUDENT_RECALL_BOUND = 0.15


def _digest(images):
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others():
    images, labels = glyphs.generate(30, 4, seed=5)
    glyphs._generate.cache_clear()
    again, labels_again = glyphs.generate(30, 4, seed=5)
    assert again is not images and _digest(again) == _digest(images) and labels_again.tolist() == labels.tolist()
    other, _ = glyphs.generate(30, 4, seed=6)
    assert np.mean(other != images) > 0.1


def test_images_are_grey_uint8_class_by_class_and_read_only():
    images, labels = glyphs.generate(7, 3, image_size=20, seed=1)
    assert images.shape == (21, 20, 20) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.tolist() == [c for c in range(7) for _ in range(3)]
    assert 5 < images.mean() < 120 and images.max() == 255  # dark canvas, bright strokes
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0] = 1


def test_images_of_a_class_are_alike_and_not_equal():
    """Each image draws its class's strokes with its own jitter: nearer its class's other images than others'."""
    images, labels = glyphs.generate(20, 10, seed=2)
    x = images.reshape(len(images), -1).astype(np.float64)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(x), dtype=bool)
    assert d[same & off_diagonal].mean() < 0.9 * d[~same].mean()
    assert d[same & off_diagonal].min() > 0


def test_default_size_and_generation_arguments_are_checked():
    assert glyphs.NUM_CLASSES >= 400 and glyphs.IMAGES_PER_CLASS >= 20 and glyphs.IMAGE_SIZE == 32
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, received 0"):
        glyphs.generate(0)
    with pytest.raises(ValueError, match="image_size must be an integer >= 4"):
        glyphs.generate(2, 2, image_size=3)


def _labels(dataset):
    return np.concatenate([labels for _, labels in dataset.batch(4096).as_numpy_iterator()])


def test_metric_learning_trains_on_the_first_half_of_the_classes_and_tests_on_the_others():
    train, test = (_labels(load_dataset("glyphs", split, image_size=32, channels=1)) for split in ("train", "test"))
    assert set(train) == set(range(200)) and set(test) == set(range(200, 400))
    assert np.bincount(train).tolist() == [20] * 200 and len(test) == 200 * 20
    assert data.num_classes("glyphs", "train") == 200 and data.num_classes("glyphs", "test") == 200
    assert set(test[:400]) > set(range(200, 300)) & set(test[:400])  # shuffled: max_eval_items reads many classes
    assert len(set(test[:400])) > 100


def test_classification_holds_out_the_first_fifth_of_every_class():
    train, test = (
        _labels(load_dataset("glyphs", split, task="classification", image_size=32, channels=1)) for split in ("train", "test")
    )
    assert np.bincount(train).tolist() == [16] * 400 and np.bincount(test).tolist() == [4] * 400
    assert data.num_classes("glyphs", "test", task="classification") == 400


def test_glyphs_takes_no_path():
    with pytest.raises(ValueError, match="path"):
        load_dataset("glyphs", "train", path="/tmp")


def test_raw_pixels_and_an_untrained_student_retrieve_the_unseen_classes_poorly():
    """The controls of issue 21 stay far below a trained teacher: R@1 below the documented bounds (chance 0.5 %)."""
    import keras

    from rkd_keras.cli import training
    from rkd_keras.cli.config import resolve_config

    config = resolve_config("student", overrides={"dataset": "glyphs", "image_size": 32, "seed": 0})
    test = training.data(config, "test")
    pixels, labels = (np.concatenate(parts) for parts in zip(*test.as_numpy_iterator()))
    assert len(labels) == 4000
    raw = recall_at_k(pixels.reshape(len(pixels), -1), labels, ks=(1,))[1]
    assert 0.05 < raw < RAW_PIXEL_RECALL_BOUND, raw
    keras.utils.set_random_seed(0)
    embeddings, labels = embed(training._network(config), test)
    untrained = recall_at_k(embeddings, labels, ks=(1,))[1]
    assert untrained < UNTRAINED_STUDENT_RECALL_BOUND, untrained


def test_the_command_line_trains_and_evaluates_on_glyphs(tmp_path):
    tiny = ["--image-size", "16", "--width", "4", "--embedding-dim", "8", "--epochs", "1", "--steps-per-epoch", "2"]
    data_flags = ["--dataset", "glyphs", "--max-train-items", "400", "--max-eval-items", "200", "--quiet"]
    assert main(["train-teacher", *data_flags, *tiny, "--runs-dir", str(tmp_path), "--name", "t"]) == 0
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["items"] == 200 and 0.0 <= metrics["recall_at_1"] <= 1.0
    assert json.loads((tmp_path / "t" / "config.json").read_text())["dataset"] == "glyphs"
