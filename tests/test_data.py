"""Loaders (mocked tfds, real Fashion-MNIST files) and P×K batches."""

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import UnpreparedBuilder
from rkd_keras import DatasetNotAvailableError, data, load_dataset, pk_batches
from rkd_keras.data import FASHION_MNIST_DIR, preprocess_image


def _mock_split(label_key, num_classes, extra_features=()):
    """An `as_dataset_fn` whose tfds split holds each class once; the image encodes the split."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        marker = {"train": 1, "test": 2}[str(split)]
        labels = np.arange(num_classes, dtype=np.int64)
        examples = {
            "image": np.full((num_classes, 5, 7, 3), marker, np.uint8),
            label_key: labels,
            **{key: labels + 1000 for key in extra_features},
        }
        return tf.data.Dataset.from_tensor_slices(examples)

    return as_dataset


def _collect(dataset):
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize("name, num_classes, boundary", [("cub200", 200, 100), ("cars196", 196, 98)])
def test_cub_and_cars_are_class_disjoint_over_both_tfds_splits(name, num_classes, boundary):
    with tfds.testing.mock_data(as_dataset_fn=_mock_split("label", num_classes)):
        train = _collect(load_dataset(name, "train", image_size=8, download=True))
        test = _collect(load_dataset(name, "test", image_size=8, download=True))
    for split, (images, labels), classes in (("train", train, range(boundary)), ("test", test, range(boundary, num_classes))):
        # Every class of the range, once from each tfds split, labels unchanged.
        assert Counter(labels.tolist()) == {c: 2 for c in classes}
        assert data.num_classes(name, split) == len(classes)
        assert sorted(set(images[:, 0, 0, 0].round().tolist())) == [1.0, 2.0]
        assert images.shape[1:] == (8, 8, 3) and images.dtype == np.float32


def test_sop_uses_class_id_and_its_own_split():
    with tfds.testing.mock_data(as_dataset_fn=_mock_split("class_id", 12, extra_features=("super_class_id",))):
        images, labels = _collect(load_dataset("sop", "test", image_size=8, download=True))
    assert labels.tolist() == list(range(12))
    assert set(images[:, 0, 0, 0].round().tolist()) == {2.0}


def test_mock_data_with_random_examples_loads_through_the_pipeline():
    with tfds.testing.mock_data(num_examples=6):
        images, labels = _collect(load_dataset("cars196", "train", image_size=16, classes=range(196), download=True))
    assert images.shape == (12, 16, 16, 3) and labels.dtype == np.int64


def test_missing_dataset_raises_a_clear_error_without_downloading(tmp_path):
    with pytest.raises(DatasetNotAvailableError) as error:
        load_dataset("cub200", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "cub200 (caltech_birds2011) is not prepared" in message
    assert str(tmp_path) in message and "manual_dir" in message and "CUB_200_2011.tgz" in message


def test_missing_dataset_messages_name_the_python_arguments(monkeypatch):
    # The command line names its flags instead (test_bad_input); the API names its own arguments.
    monkeypatch.setattr(tfds, "builder", UnpreparedBuilder)
    for download, words in ((False, "is not prepared in tfds-data/caltech_birds2011/1.0.0. Pass `download=True`"),
                            (True, "could not be prepared in tfds-data/caltech_birds2011/1.0.0: no network (mocked)")):
        with pytest.raises(DatasetNotAvailableError) as error:
            load_dataset("cub200", "train", data_dir="tfds-data", download=download)
        message = str(error.value)
        assert words in message and "put CUB_200_2011.tgz in a folder FOLDER and pass `manual_dir=FOLDER`" in message
        assert "--" not in message, message


def test_failed_download_is_wrapped(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DatasetNotAvailableError, match="could not be prepared.*no network.*manual_dir"):
        load_dataset("cars196", "test", data_dir=str(tmp_path), download=True)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="dataset must be one of cub200, cars196, sop, fashion_mnist, cifar10, cifar100, folder, glyphs; received .mnist."):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split must be one of train, validation, test; received 'val'"):
        load_dataset("fashion_mnist", "val")


def test_fashion_mnist_reads_the_debian_files_class_disjoint():
    assert (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), "install dataset-fashion-mnist"
    train = load_dataset("fashion_mnist", "train", image_size=28, resize_size=28, channels=1)
    test = load_dataset("fashion_mnist", "test", image_size=28, resize_size=28, channels=1)
    train_labels = np.concatenate([y for _, y in train.batch(8192).as_numpy_iterator()])
    test_labels = np.concatenate([y for _, y in test.batch(8192).as_numpy_iterator()])
    # 7,000 images per class over the official train and t10k files.
    assert Counter(train_labels.tolist()) == {c: 7000 for c in range(5)}
    assert Counter(test_labels.tolist()) == {c: 7000 for c in range(5, 10)}
    assert (data.num_classes("fashion_mnist", "train"), data.num_classes("fashion_mnist", "test")) == (5, 5)
    assert data.num_classes("fashion_mnist", "test", classes=[9, 3]) == 2
    with pytest.raises(ValueError, match=r"lists \[9\] more than once; give each class once"):
        data.num_classes("fashion_mnist", "test", classes=[9, 9, 3])  # one rule for class lists (issue 25)
    image, _ = next(iter(test))
    assert image.shape == (28, 28, 1) and 0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 255


def test_fashion_mnist_custom_classes_and_three_channels():
    dataset = load_dataset("fashion_mnist", "test", image_size=24, classes=[9], channels=3)
    image, label = next(iter(dataset))
    assert image.shape == (24, 24, 3) and int(label) == 9
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_fashion_mnist_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotAvailableError, match="no train/t10k \\*-ubyte.gz files in"):
        load_dataset("fashion_mnist", "train", path=str(tmp_path))


@pytest.mark.parametrize(
    "image, message",
    [(np.zeros((28, 28), np.uint8), "Images must have shape"), (np.zeros((8, 8, 3), np.int32), "uint8 or floating")],
)
def test_images_of_wrong_rank_or_dtype_are_refused(image, message):
    with pytest.raises(ValueError, match=message):
        preprocess_image(image, image_size=4, resize_size=4, augment=False)


def test_augmentation_crops_and_centre_crop_is_the_middle():
    image = np.arange(10 * 10, dtype=np.float32).reshape(10, 10, 1)
    centre = preprocess_image(image, image_size=6, resize_size=10, augment=False, channels=1)
    np.testing.assert_array_equal(centre[..., 0], image[2:8, 2:8, 0])
    crop = preprocess_image(image, image_size=6, resize_size=10, augment=True, channels=1).numpy()[..., 0]
    windows = [image[i : i + 6, j : j + 6, 0] for i in range(5) for j in range(5)]
    assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)


def _items(sizes):
    """Items whose feature is their own index, with `sizes[c]` items of class c."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return tf.data.Dataset.from_tensor_slices((np.arange(len(labels)), labels)), labels


def _batches(dataset):
    return [(x, y) for x, y in dataset.as_numpy_iterator()]


def test_pk_batches_hold_p_classes_of_k_items_each():
    dataset, labels = _items([7] * 10 + [3, 2])  # two classes smaller than K = 4
    batches = _batches(pk_batches(dataset, 5, 4, seed=0))
    assert len(batches) == 3  # ceil(12 classes / 5)
    seen = set()
    for x, y in batches:
        assert len(y) == 20
        assert sorted(Counter(y.tolist()).values()) == [4] * 5
        np.testing.assert_array_equal(labels[x], y)  # features travel with their labels
        seen |= set(y.tolist())
    assert seen == set(range(12))  # the last batch is topped up, every class comes
    # Class 11 has only items 73 and 74: both come, plus two repeats.
    small = [x for batch, ys in batches for x, c in zip(batch, ys) if c == 11]
    assert len(small) == 4 and set(small) == {73, 74}


def test_pk_batches_are_reproducible_under_a_seed_and_change_between_epochs():
    dataset, _ = _items([6] * 8)
    first = pk_batches(dataset, 4, 3, seed=7)
    epoch1, epoch2 = _batches(first), _batches(first)
    again = _batches(pk_batches(dataset, 4, 3, seed=7))
    for (a, _), (b, _) in zip(epoch1, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(epoch1, epoch2))


def test_pk_batches_from_a_resumed_epoch_are_that_epochs_batches():
    dataset, _ = _items([6] * 8)
    fresh = pk_batches(dataset, 4, 3, seed=7)
    for _ in range(2):
        _batches(fresh)
    third = _batches(fresh)
    resumed = _batches(pk_batches(dataset, 4, 3, seed=7, first_epoch=2))
    assert len(third) == len(resumed) == 2
    for (a, _), (b, _) in zip(third, resumed):
        np.testing.assert_array_equal(a, b)


def test_pk_batches_needs_enough_classes():
    dataset, _ = _items([3, 3, 3])
    with pytest.raises(ValueError, match="needs at least classes_per_batch=4 classes, but the dataset has 3"):
        pk_batches(dataset, 4, 2)


def test_validation_split_holds_out_every_tenth_training_image():
    def collect(split):
        dataset = load_dataset("fashion_mnist", split, image_size=28, channels=1, validation_fraction=0.1)
        images, labels = zip(*dataset.batch(8192).as_numpy_iterator())
        return np.concatenate(images), np.concatenate(labels)

    train, validation = collect("train"), collect("validation")
    assert len(validation[1]) == 3500 and len(train[1]) == 31500
    assert set(validation[1].tolist()) == set(range(5))
    # Disjoint: no validation image is also a training image.
    train_keys = {row.tobytes() for row in train[0][:, ::4, ::4].astype(np.uint8)}
    shared = sum(row.tobytes() in train_keys for row in validation[0][:, ::4, ::4].astype(np.uint8))
    assert shared < 10  # Fashion-MNIST itself has a handful of duplicate images


def test_validation_split_needs_a_fraction():
    with pytest.raises(ValueError, match="The validation split needs validation_fraction > 0"):
        load_dataset("fashion_mnist", "validation")
    with pytest.raises(ValueError, match="validation_fraction must be a finite number in \\[0.0, 1.0\\), received 1.0"):
        load_dataset("fashion_mnist", "train", validation_fraction=1.0)


def _indexed_split(count):
    """An `as_dataset_fn` whose train split holds `count` images, each carrying its index in its pixels."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        index = np.arange(count)
        images = np.zeros((count, 32, 32, 3), np.uint8)
        images[..., 0], images[..., 1] = (index // 256)[:, None, None], (index % 256)[:, None, None]
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": index % 10})

    return as_dataset


def _split_indices(validation_fraction, count=1000):
    """The indices of the training images in the train and the validation split."""
    indices = []
    with tfds.testing.mock_data(as_dataset_fn=_indexed_split(count)):
        for split in ("train", "validation"):
            images, _ = _collect(load_dataset(
                "cifar10", split, task="classification", image_size=32, augment=False,
                validation_fraction=validation_fraction, download=True,
            ))
            indices.append(images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1].astype(int))
    return indices


@pytest.mark.parametrize("k", [2, 3, 4, 10])
def test_a_fraction_of_one_in_k_holds_out_every_kth_image_from_the_first(k):
    # The split of rkd_keras 0.1.0 (every round(1/f)-th image), on which the published numbers were measured.
    train, validation = _split_indices(1 / k)
    np.testing.assert_array_equal(validation, np.arange(0, 1000, k))
    np.testing.assert_array_equal(train, np.setdiff1d(np.arange(1000), validation))


@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.15, 0.45])
def test_any_fraction_holds_out_that_share_of_every_prefix(fraction):
    # 0.1.0 held out every round(1/f)-th image: 33 % for 0.3, 50 % for 0.9.
    train, validation = _split_indices(fraction)
    assert np.array_equal(np.sort(np.concatenate([train, validation])), np.arange(1000))
    held = np.zeros(1000, bool)
    held[validation] = True
    exact = Fraction(str(fraction))
    expected = [-(-n * exact.numerator // exact.denominator) for n in range(1, 1001)]
    np.testing.assert_array_equal(np.cumsum(held), expected)  # of the first n images, ⌈n·f⌉


@pytest.mark.parametrize("name, task, classes, message", [
    ("fashion_mnist", "classification", [42], "classes \\[42\\] are not labels of fashion_mnist, whose 10 classes are 0–9"),
    ("fashion_mnist", "metric", [3, 10, 11], "classes \\[10, 11\\] are not labels of fashion_mnist, whose 10 classes are 0–9"),
    ("cifar100", "classification", [99, 100], "classes \\[100\\] are not labels of cifar100, whose 100 classes are 0–99"),
    ("cub200", "metric", [200], "classes \\[200\\] are not labels of cub200, whose 200 classes are 0–199"),
])
def test_classes_outside_the_dataset_are_refused(name, task, classes, message):
    # Refused before any data is read (mocked, so that no check that came too late could reach the real tfds).
    with tfds.testing.mock_data(as_dataset_fn=_indexed_split(10)):
        with pytest.raises(ValueError, match=message + "; keep classes in that range"):
            load_dataset(name, "train", task=task, classes=classes)
    with pytest.raises(ValueError, match=message):
        data.num_classes(name, "train", classes=classes, task=task)


@pytest.mark.parametrize("name, task", [("fashion_mnist", "metric"), ("cifar10", "classification")])
def test_a_class_given_twice_is_refused_as_the_command_line_refuses_it(name, task):
    from rkd_keras.cli.config import ConfigError, resolve_config

    with tfds.testing.mock_data(as_dataset_fn=_indexed_split(10)):
        with pytest.raises(ValueError) as error:
            load_dataset(name, "train", task=task, classes=[0, 1, 1])
    assert str(error.value) == "classes lists [1] more than once; give each class once."
    with pytest.raises(ValueError, match=r"^classes lists \[1\] more than once; give each class once\.$"):
        data.num_classes(name, "train", classes=[0, 1, 1], task=task)
    with pytest.raises(ConfigError, match=r"train_classes lists \[1\] more than once; give each class once\.$"):
        resolve_config("teacher", overrides={"train_classes": [0, 1, 1]})


def _labelled_split(num_classes, per_class):
    """An `as_dataset_fn` whose train and test splits hold `per_class[split]` images of each class, marked by split."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        marker = {"train": 1, "test": 2}[str(split)]
        labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class[str(split)])  # class by class
        return tf.data.Dataset.from_tensor_slices({
            "image": np.full((len(labels), 32, 32, 3), marker, np.uint8),
            "label": labels,
            "coarse_label": labels // 5,
        })

    return as_dataset


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_classification_uses_every_class_its_own_split_and_holds_out_validation(name, num_classes):
    def collect(split):
        return _collect(load_dataset(
            name, split, task="classification", image_size=32, validation_fraction=0.25, download=True
        ))

    with tfds.testing.mock_data(as_dataset_fn=_labelled_split(num_classes, {"train": 8, "test": 3})):
        (train_images, train), (_, validation), (test_images, test) = map(collect, ("train", "validation", "test"))
    # 8 training images of each class, in a row: every 4th image held out for validation (2), 6 train; 3 test images each.
    assert len(train) == 6 * num_classes and len(validation) == 2 * num_classes and len(test) == 3 * num_classes
    assert Counter(train.tolist()) == {c: 6 for c in range(num_classes)}
    assert Counter(validation.tolist()) == {c: 2 for c in range(num_classes)}
    assert Counter(test.tolist()) == {c: 3 for c in range(num_classes)}
    # Train from the training images, test from the test images, not resized or cropped.
    assert set(train_images[:, 0, 0, 0].tolist()) == {1.0} and set(test_images[:, 0, 0, 0].tolist()) == {2.0}
    assert train_images.shape[1:] == test_images.shape[1:] == (32, 32, 3)
    assert data.num_classes(name, "test", task="classification") == num_classes


def test_fashion_mnist_classification_reads_the_training_and_t10k_files():
    def labels(split):
        dataset = load_dataset(
            "fashion_mnist", split, task="classification", image_size=28, channels=1, validation_fraction=0.1
        )
        images, labels = zip(*dataset.batch(8192).as_numpy_iterator())
        return np.concatenate(images), np.concatenate(labels)

    (train_images, train), (_, validation), (test_images, test) = map(labels, ("train", "validation", "test"))
    # 60,000 training images minus every 10th; the 10,000 t10k images, 1,000 of each class.
    assert (len(train), len(validation), len(test)) == (54_000, 6_000, 10_000)
    assert Counter(test.tolist()) == {c: 1000 for c in range(10)}
    assert set(train.tolist()) == set(validation.tolist()) == set(range(10))
    assert train_images.shape[1:] == test_images.shape[1:] == (28, 28, 1)  # not resized: the whole image
    assert (data.num_classes("fashion_mnist", "train", task="classification"), data.default_resize_size(28, "classification")) == (10, 28)


@pytest.mark.parametrize(
    "name, task, message",
    [
        ("cub200", "classification", "cub200 serves metric only, not classification; for classification choose one of "
         "fashion_mnist, cifar10, cifar100, folder, glyphs"),
        ("cifar10", "metric", "cifar10 serves classification only, not metric; for metric choose one of "
         "cub200, cars196, sop, fashion_mnist, folder, glyphs"),
    ],
)
def test_a_task_the_dataset_does_not_serve_is_refused(name, task, message):
    with pytest.raises(ValueError) as error:
        load_dataset(name, "train", task=task)
    assert str(error.value) == message + "."


def test_missing_cifar_raises_the_clear_error_at_once_without_downloading(tmp_path, monkeypatch):
    def no_download(self, *args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(DatasetNotAvailableError) as error:
        load_dataset("cifar100", "train", task="classification", data_dir=str(tmp_path))
    message = str(error.value)
    assert "cifar100 (cifar100) is not prepared" in message and "cifar-100-python.tar.gz" in message
