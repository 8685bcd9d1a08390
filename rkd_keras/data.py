"""Datasets of the paper for metric learning and classification, and class-balanced P×K batches.

Every loader returns a `tf.data.Dataset` of `(image, label)` with float32
images in [0, 255] (the models normalize them, see `models.py`) and int64
labels that keep their dataset identity.

- Metric learning (`task="metric"`, the default): training and evaluation use
  disjoint classes, as in the paper: CUB-200-2011 classes 0–99 / 100–199,
  Cars196 0–97 / 98–195, Stanford Online Products Ebay_train / Ebay_test,
  Fashion-MNIST (the offline default) classes 0–4 / 5–9.
- Classification (`task="classification"`): every class in train and test,
  the dataset's own split by image: CIFAR-10, CIFAR-100, Fashion-MNIST
  (60,000 training images, the 10,000 of its t10k files for test).
- Glyphs (`"glyphs"`, `rkd_keras.glyphs`): 400 classes of 20 generated
  32×32 stroke drawings, no download. Metric learning: classes 0–199 /
  200–399; classification: every class, the first fifth of each class's
  images held out for test.
- Your own images (`"folder"`, `path=` a folder of one subfolder per class,
  `rkd_keras.image_folders`): both tasks; for metric learning the first half
  of the sorted classes train, for classification a fixed fifth of each
  class's images is held out for test.

`choices.DATASET_TASKS` says which tasks each dataset serves.
"""

import functools
import gzip
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import tensorflow as tf

from rkd_keras import glyphs, image_folders
from rkd_keras.checks import check_choice, check_classes, check_dataset_arguments, check_int, check_number, check_task
from rkd_keras.choices import CLASSIFICATION_CLASSES, DATASET_CLASSES, DATASET_TASKS, DATASETS, TASKS  # noqa: F401 (data.DATASETS & co. stay public)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "validation", "test")

# name → (tfds builder, label feature, whether its tfds splits are by image
# (for metric learning the paper then splits by class over both), archives
# users put in `manual_dir` to prepare it offline).
_TFDS = {
    "cub200": ("caltech_birds2011", "label", True, "CUB_200_2011.tgz"),
    "cars196": ("cars196", "label", True, "car_ims.tgz, cars_annos.mat"),
    "sop": ("stanford_online_products", "class_id", False, "Stanford_Online_Products.zip"),
    "cifar10": ("cifar10", "label", True, "cifar-10-python.tar.gz"),
    "cifar100": ("cifar100", "label", True, "cifar-100-python.tar.gz"),
}


class DatasetNotAvailableError(RuntimeError):
    """The data of a dataset is not on this machine and was not downloaded."""


def _default_classes(name, split):
    """The labels of a split of CUB, Cars196 or Fashion-MNIST, split by class as the paper."""
    train, test = DATASET_CLASSES[name]
    return range(train, train + test) if split == "test" else range(train)


def num_classes(name: str, split: str, classes=None, *, task: str = "metric", path: str | None = None) -> int:
    """Number of classes in `load_dataset(name, split, classes=classes, task=task, path=path)`.

    The `"validation"` split holds images of the training classes.

    Example:
    >>> num_classes("fashion_mnist", "train"), num_classes("sop", "test")
    (5, 11316)
    >>> num_classes("fashion_mnist", "test", task="classification")
    10
    """
    check_task(name, task)
    check_choice("split", split, SPLITS)
    if name == "folder":
        return len(set(image_folders.split(_image_folder(path), split, task=task, classes=classes)[1]))
    if classes is not None:
        return len(set(_check_classes(classes, name)))
    if task == "classification":
        return CLASSIFICATION_CLASSES[name]
    train, test = DATASET_CLASSES[name]
    return test if split == "test" else train


def default_resize_size(image_size: int, task: str = "metric") -> int:
    """The side images are resized to before cropping to `image_size`.

    Metric learning follows the paper (resize 256, crop 224: `image_size ·
    256 / 224`); classification datasets come at their training size, so
    their images are not resized (CIFAR and Fashion-MNIST are trained at
    their own 32 and 28 pixels, without the paper's crop of the border).

    Example:
    >>> default_resize_size(224), default_resize_size(32, "classification")
    (256, 32)
    """
    return image_size if task == "classification" else round(image_size * 256 / 224)


def load_dataset(
    name: str,
    split: str,
    *,
    task: str = "metric",
    image_size: int = 224,
    resize_size: int | None = None,
    augment: bool | None = None,
    channels: int = 3,
    classes=None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
    path: str | None = None,
    validation_fraction: float = 0.0,
    decode: bool = True,
) -> tf.data.Dataset:
    """Loads a split of one of the paper's datasets, for metric learning or classification.

    Metric learning (`task="metric"`): class-disjoint splits, the unseen
    classes for test. Classification (`task="classification"`): every class,
    the dataset's own training images for train and validation and its test
    images for test. `choices.DATASET_TASKS` lists the tasks of each dataset:
    `cub200`, `cars196` and `sop` serve metric learning, `cifar10` and
    `cifar100` classification, `fashion_mnist`, `glyphs` (generated stroke
    drawings, 400 classes, `rkd_keras.glyphs`) and `folder` (your own images,
    `path=` a folder with one subfolder of images per class; see
    `rkd_keras.image_folders`) both.

    Images are resized to `resize_size` (shorter side for nothing: the paper
    resizes to a square 256×256), then cropped to `image_size`: a random crop
    and horizontal flip when `augment`, a centre crop otherwise. Images of a
    folder may differ in size: each is resized so.

    Args:
        name: One of `"cub200"`, `"cars196"`, `"sop"`, `"fashion_mnist"`,
            `"cifar10"`, `"cifar100"`, `"glyphs"`, `"folder"` (with `path`).
        split: `"train"`, `"validation"` (held-out training images, see
            `validation_fraction`) or `"test"`. For metric learning, train and
            validation hold the training classes, test the unseen classes.
        task: `"metric"` (the default) or `"classification"`.
        image_size: Side of the square output images (paper: 224).
        resize_size: Side images are resized to before cropping; defaults to
            `default_resize_size(image_size, task)`: the paper's ratio
            `image_size · 256 / 224` for metric learning, no resize for
            classification.
        augment: Random crop + flip; defaults to `split == "train"`.
        channels: 3 for ImageNet backbones (grey images are repeated), or 1.
        classes: Labels to keep. Metric learning: instead of the paper's class
            split (for Fashion-MNIST the default is 0–4 for train and 5–9 for
            test, for glyphs 0–199 and 200–399; for a folder the first half
            of its sorted classes, rounded up, for train and the others for
            test). Classification: default
            all. A folder's classes may be given by name.
        data_dir: tensorflow-datasets data directory.
        manual_dir: Folder holding the dataset's original archive, used by
            tensorflow-datasets instead of downloading (with `download=True`).
        download: Prepare the dataset with tensorflow-datasets if it is not
            prepared yet. Off by default: nothing is fetched unless asked.
        path: `"folder"`: the folder holding one subfolder of images per
            class (PNG, JPEG, BMP or GIF; other and hidden files are skipped
            with one warning). Each image of the split is decoded once when
            it is loaded, so that a corrupt, truncated or unreadable file is
            named (relative to `path`) before anything trains.
            Fashion-MNIST: folder of the `*-ubyte.gz` files.
        validation_fraction: Share of the training images held out as the
            `"validation"` split and removed from `"train"`,
            deterministically: of the first n images, exactly
            `ceil(n · fraction)` (for `1 / k`, every k-th image from the
            first). Select checkpoints and hyperparameters on it, never on
            the test split.
        decode: `"folder"` only. `False` gives the split's `(path, label)`
            pairs instead, every image checked but none kept decoded: give
            them to `pk_batches` with `map_fn=rkd_keras.data.folder_image_loader(...)` and
            only the images a batch samples are decoded, so memory does not
            grow with the folder.

    Returns:
        A `tf.data.Dataset` of `(image, label)`, image float32
        `(image_size, image_size, channels)` in [0, 255], label int64 (with
        `decode=False`, `(path, label)`, path a string). For a folder, its
        `class_names` attribute holds the sorted class names that the
        labels index.

    Raises:
        DatasetNotAvailableError: the data is not on this machine.
        ValueError: the dataset does not serve `task` (the message names those
            that do), or another argument is out of range.

    Example:
    ```python
    train = load_dataset("fashion_mnist", "train", task="classification", image_size=28, channels=1,
                         validation_fraction=0.1)   # 54,000 images of all 10 classes
    ```
    """
    check_task(name, task)
    arguments = {"data_dir": data_dir, "manual_dir": manual_dir, "path": path}
    check_dataset_arguments(name, [argument for argument, value in arguments.items() if value is not None])
    check_choice("split", split, SPLITS)
    check_number("validation_fraction", validation_fraction, low=0.0, high=1.0, high_open=True)
    if split == "validation" and not validation_fraction:
        raise ValueError("The validation split needs validation_fraction > 0 (e.g. 0.1); received 0.")
    check_int("image_size", image_size, low=1)
    if resize_size is not None:
        check_int("resize_size", resize_size, low=image_size)
    check_choice("channels", channels, (1, 3))
    if not decode and name != "folder":
        raise ValueError(f"decode=False gives the paths of a folder's images; the dataset {name} has no image files.")
    if classes is not None and name != "folder":
        classes = _check_classes(classes, name)
    source_split = "test" if split == "test" else "train"
    folder = None
    if name == "folder":
        folder = _image_folder(path)
        files, labels = image_folders.split(folder, source_split, task=task, classes=classes)
        # Paths, not images: the hold-out below and the decoding after it read only the split's files.
        paths = tf.constant([str(Path(folder.root, file)) for file in files], tf.string)
        dataset = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    elif name == "fashion_mnist":
        parts = _fashion_mnist(path)
        if task == "classification":
            images, labels = parts[source_split]
        else:
            # The paper's split is by class: both files' images of a class.
            images, labels = (np.concatenate(arrays) for arrays in zip(parts["train"], parts["test"]))
            if classes is None:
                classes = _default_classes(name, source_split)
        if classes is not None:
            keep = np.isin(labels, list(classes))
            images, labels = images[keep], labels[keep]
        dataset = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    elif name == "glyphs":
        images, labels = _glyphs(source_split, task)
        if classes is None and task == "metric":
            classes = _default_classes(name, source_split)
        if classes is not None:
            keep = np.isin(labels, list(classes))
            images, labels = images[keep], labels[keep]
        dataset = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    else:
        dataset = _tfds_split(name, source_split, classes, data_dir, manual_dir, download, task)
    if source_split == "train" and validation_fraction:
        held_out, validation = _held_out(validation_fraction), split == "validation"
        dataset = (
            dataset.enumerate()
            .filter(lambda index, item: tf.equal(held_out(index), validation))
            .map(lambda index, item: item)
        )
    resize_size = resize_size or default_resize_size(image_size, task)
    augment = split == "train" if augment is None else augment
    sizes = dict(image_size=image_size, resize_size=resize_size, augment=augment, channels=channels)
    if folder is not None:
        paths = tuple(path.decode() for path in dataset.map(lambda path, label: path).as_numpy_iterator())
        _check_images(folder.root, paths, channels)
        if decode:
            dataset = dataset.map(folder_image_loader(**sizes), num_parallel_calls=tf.data.AUTOTUNE)
        dataset.class_names = list(folder.class_names)
        return dataset
    return dataset.map(
        lambda image, label: (preprocess_image(image, **sizes), label), num_parallel_calls=tf.data.AUTOTUNE
    )


def folder_image_loader(*, image_size: int, resize_size: int, augment: bool, channels: int = 3):
    """`fn(path, label) -> (image, label)`: an image file decoded and resized as `load_dataset` gives a folder's.

    The `map_fn` of `pk_batches` for the `(path, label)` pairs of
    `load_dataset("folder", ..., decode=False)`: each sampled image is
    decoded in the batches' pipeline, in parallel, the same pixels as
    `decode=True` gives.

    Args:
        image_size, resize_size, augment, channels: As `preprocess_image`'s
            (`resize_size` given: `default_resize_size` gives
            `load_dataset`'s default).

    Example:
    ```python
    paths = load_dataset("folder", "train", path="images/", decode=False)
    loader = folder_image_loader(image_size=224, resize_size=256, augment=True)
    batches = pk_batches(paths, 25, 5, map_fn=loader)
    ```
    """
    sizes = dict(image_size=image_size, resize_size=resize_size, augment=augment, channels=channels)
    return lambda path, label: (preprocess_image(_decode(path, channels), **sizes), label)


def image_paths(
    name: str,
    split: str,
    *,
    task: str = "metric",
    classes=None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
    path: str | None = None,
    validation_fraction: float = 0.0,
) -> list:
    """The path of each image of `load_dataset(name, split, ...)`, in the order it yields them.

    The key that joins an image to its row of a teacher-embeddings file
    (`rkd_keras.read_embeddings`). For a folder: the image's path relative to
    `path`, POSIX separators (`"coat/0001.png"`). For a named dataset:
    `"SPLIT/INDEX"`, SPLIT the split the images come from (`"train"`, which
    holds the validation images too, or `"test"`), INDEX the image's position
    in `load_dataset(name, SPLIT, task=task, classes=classes)` without a
    validation hold-out: so the embeddings of a named dataset must be written
    with the same `task` and `classes` as they are read with.

    Args:
        name: As `load_dataset`'s; so are `split`, `task`, `classes`,
            `data_dir`, `manual_dir`, `download`, `path` and
            `validation_fraction` (the images' size does not change their paths).

    Returns:
        A list of strings, one per image.

    Example:
    >>> image_paths("fashion_mnist", "validation", validation_fraction=0.5)[:3]
    ['train/0', 'train/2', 'train/4']
    """
    check_task(name, task)
    arguments = {"data_dir": data_dir, "manual_dir": manual_dir, "path": path}
    check_dataset_arguments(name, [argument for argument, value in arguments.items() if value is not None])
    check_choice("split", split, SPLITS)
    check_number("validation_fraction", validation_fraction, low=0.0, high=1.0, high_open=True)
    if split == "validation" and not validation_fraction:
        raise ValueError("The validation split needs validation_fraction > 0 (e.g. 0.1); received 0.")
    if classes is not None and name != "folder":
        classes = _check_classes(classes, name)
    source_split = "test" if split == "test" else "train"
    if name == "folder":
        paths = image_folders.split(_image_folder(path), source_split, task=task, classes=classes)[0]
    else:
        if name == "fashion_mnist":
            parts = _fashion_mnist(path)
            if task == "classification":
                labels = parts[source_split][1]
            else:
                labels = np.concatenate([parts["train"][1], parts["test"][1]])
                classes = _default_classes(name, source_split) if classes is None else classes
            count = int(np.isin(labels, list(classes)).sum()) if classes is not None else len(labels)
        else:
            dataset = _tfds_split(name, source_split, classes, data_dir, manual_dir, download, task)
            count = int(dataset.reduce(0, lambda total, _: total + 1))
        paths = [f"{source_split}/{index}" for index in range(count)]
    if source_split == "train" and validation_fraction:
        held_out, validation = _held_out(validation_fraction), split == "validation"
        paths = [item for index, item in enumerate(paths) if held_out(index) == validation]
    return list(paths)


def _image_folder(path):
    if path is None:
        raise ValueError("the dataset folder needs path= the folder that holds one subfolder of images per class.")
    return image_folders.scan(path)


def _decode(file, channels):
    """The image in `file` (a string tensor) as uint8 `(height, width, channels)`; a GIF's first frame.

    PNG and JPEG are decoded to `channels` directly, so a grey PNG read as
    grey keeps its exact values; BMP and GIF decode to colour only, and are
    converted.
    """
    contents = tf.io.read_file(file)
    magic = tf.strings.substr(contents, 0, 3)
    colour_only = tf.logical_or(tf.equal(tf.strings.substr(magic, 0, 2), "BM"), tf.equal(magic, "GIF"))

    def as_colour():
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return tf.image.rgb_to_grayscale(image) if channels == 1 else image

    image = tf.cond(
        colour_only, as_colour, lambda: tf.io.decode_image(contents, channels=channels, expand_animations=False)
    )
    image.set_shape((None, None, channels))
    return image


@functools.lru_cache(maxsize=16)
def _check_images(root, paths, channels):
    """Decodes every image once (in parallel, then dropped); refuses the first that fails, named relative to `root`.

    A run reads its splits more than once (checks, training, evaluation): each set of images is checked once.
    """
    if not paths:
        return
    shapes = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda path: tf.shape(_decode(path, channels)), num_parallel_calls=tf.data.AUTOTUNE
    )
    try:
        for _ in shapes.batch(1024).as_numpy_iterator():
            pass
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError, tf.errors.UnknownError):
        for path in paths:  # tf.data does not say which file failed: find it
            name = Path(path).relative_to(root).as_posix()
            try:
                with open(path, "rb") as file:
                    file.read(1)
            except OSError as error:
                raise PermissionError(f"image folder {root}: {name} cannot be read ({error.strerror or error}).") from None
            try:
                _decode(tf.constant(path), channels)
            except tf.errors.OpError as error:
                # TensorFlow's message, without its op frames: "Invalid PNG data, size 944".
                reason = " ".join(re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\bname:\s*$", "", error.message).split())
                raise ValueError(
                    f"image folder {root}: {name} is not a readable image ({reason}; corrupt or truncated?); "
                    "replace or remove it."
                ) from None
        raise


def _glyphs(split, task):
    """The generated glyphs of a split, in one fixed shuffled order (as an image folder's).

    Metric learning: every image (the caller keeps the split's classes).
    Classification: each class's first `glyphs.TEST_FRACTION` of images for test, the others for train.
    """
    images, labels = glyphs.generate()
    if task == "classification":
        within = np.arange(len(labels)) % glyphs.IMAGES_PER_CLASS  # generated class by class
        test = within < int(np.ceil(glyphs.IMAGES_PER_CLASS * glyphs.TEST_FRACTION))
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    # Shuffled, so that a validation hold-out or `max_eval_items` reads every class.
    order = np.random.default_rng(0).permutation(len(labels))
    return images[order], labels[order]


def _held_out(validation_fraction):
    """`held_out(index)`: whether the training image at `index` (an int64 tensor) is held out for validation.

    Image i is held out when ⌈(i + 1)·f⌉ > ⌈i·f⌉: image 0, then one each
    time i·f passes an integer, so the first n images hold exactly ⌈n·f⌉ of
    them. For f = 1/k these are images 0, k, 2k, ... (the held-out images of
    rkd_keras 0.1.0, which took every round(1/f)-th image). Computed in
    integers on f as the nearest fraction p/q with q ≤ 10⁹ (0.1 as 1/10),
    where floats would misplace images (30 · 0.1 > 3).
    """
    fraction = Fraction(validation_fraction).limit_denominator(10**9)
    if fraction == 0:
        raise ValueError(f"validation_fraction {validation_fraction!r} holds out no image; pass 0 or at least 1e-9.")
    numerator, denominator = fraction.numerator, fraction.denominator

    def ceil_fraction(index):  # ⌈index · p/q⌉
        return -(-index * numerator // denominator)

    return lambda index: ceil_fraction(index + 1) > ceil_fraction(index)


def _dataset_classes(name):
    """Number of classes of dataset `name`: its labels are 0 … that − 1."""
    return CLASSIFICATION_CLASSES[name] if name in CLASSIFICATION_CLASSES else sum(DATASET_CLASSES[name])


def _check_classes(classes, name):
    """A non-empty list of labels of dataset `name`."""
    labels = [int(label) for label in check_classes("classes", classes)]
    total = _dataset_classes(name)
    unknown = sorted({label for label in labels if label >= total})
    if unknown:
        raise ValueError(
            f"classes {unknown} are not labels of {name}, whose {total} classes are 0–{total - 1}; "
            "keep classes in that range."
        )
    return labels


def preprocess_image(image, *, image_size: int, resize_size: int, augment: bool, channels: int = 3):
    """Resize to `resize_size`, then random (augment) or centre crop to `image_size`.

    Accepts uint8 or float images of rank 3 `(H, W, C)` with 1 or 3 channels.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"Images must have shape (height, width, 1 or 3 channels), received {image.shape}. "
            "Add a channel axis to grey images (`image[..., None]`)."
        )
    if not (image.dtype.is_floating or image.dtype == tf.uint8):
        raise ValueError(f"Images must be uint8 or floating point in [0, 255], received {image.dtype.name}.")
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size}).")
    image = tf.image.resize(tf.cast(image, tf.float32), (resize_size, resize_size))
    if augment:
        image = tf.image.random_crop(image, (image_size, image_size, image.shape[-1]))
        image = tf.image.random_flip_left_right(image)
    else:
        offset = (resize_size - image_size) // 2
        image = image[offset : offset + image_size, offset : offset + image_size]
    if channels == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 1 and image.shape[-1] == 3:
        image = tf.image.rgb_to_grayscale(image)
    return image


@functools.lru_cache(maxsize=2)
def _fashion_mnist(path):
    """Fashion-MNIST's 60,000 training and 10,000 test images (uint8, 28×28) and labels, from disk or keras.

    Returns `{"train": (images, labels), "test": (images, labels)}`, read-only
    arrays kept for the next call: a run reads its train, validation and test
    splits, and `rkd-keras compare` dozens of runs (decompressing the files
    took ~1 s each time).
    """
    folders = [Path(path)] if path else [FASHION_MNIST_DIR]
    for folder in folders:
        files = {
            split: [folder / f"{part}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
            for split, part in (("train", "train"), ("test", "t10k"))
        }
        if all(f.exists() for pair in files.values() for f in pair):
            return {
                split: _read_only(_read_idx(images, 16).reshape(-1, 28, 28), _read_idx(labels, 8).astype(np.int64))
                for split, (images, labels) in files.items()
            }
    if path:
        raise DatasetNotAvailableError(
            f"Fashion-MNIST: no train/t10k *-ubyte.gz files in {path}. Point `path` to the folder "
            "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
            "and t10k-labels-idx1-ubyte.gz."
        )
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:
        raise DatasetNotAvailableError(
            f"Fashion-MNIST is not in {FASHION_MNIST_DIR} and could not be downloaded ({error}). "
            "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass "
            "`path=` a folder holding the four *-ubyte.gz files."
        ) from error
    return {"train": _read_only(x_train, y_train.astype(np.int64)), "test": _read_only(x_test, y_test.astype(np.int64))}


def _read_only(*arrays):
    for array in arrays:
        array.setflags(write=False)
    return arrays


def _read_idx(file, header_bytes):
    with gzip.open(file, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header_bytes)


def _tfds_split(name, split, classes, data_dir, manual_dir, download, task):
    import tensorflow_datasets as tfds

    builder_name, label_key, split_by_image, archives = _TFDS[name]
    builder = tfds.builder(builder_name, data_dir=data_dir)
    if not builder.is_prepared():
        where = f"{builder.data_dir}"
        if not download:
            raise DatasetNotAvailableError(
                f"{name} ({builder_name}) is not prepared in {where}. Pass `download=True` to let "
                f"tensorflow-datasets fetch it, or, offline, put {archives} in a folder FOLDER and pass "
                "`manual_dir=FOLDER` with `download=True`."
            )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # tfds raises AssertionError, DownloadError, ConnectionError...
            raise DatasetNotAvailableError(
                f"{name} ({builder_name}) could not be prepared in {where}: {error}. Offline, put "
                f"{archives} in a folder FOLDER and pass `manual_dir=FOLDER`."
            ) from error
    decoders = {key: tfds.decode.SkipDecoding() for key in ("segmentation_mask",) if key in builder.info.features}
    if not split_by_image or task == "classification":
        # Classification keeps the dataset's own split by image; Stanford
        # Online Products' own split is already class-disjoint.
        dataset = builder.as_dataset(split=split, decoders=decoders or None)
    else:
        # The tfds splits are by image; the paper splits by class over both.
        dataset = builder.as_dataset(split="train", decoders=decoders or None).concatenate(
            builder.as_dataset(split="test", decoders=decoders or None)
        )
        if classes is None:
            classes = _default_classes(name, split)
    dataset = dataset.map(lambda example: (example["image"], example[label_key]))
    if classes is not None:
        keep = tf.constant(sorted(set(int(c) for c in classes)), tf.int64)
        dataset = dataset.filter(lambda image, label: tf.reduce_any(tf.equal(label, keep)))
    return dataset


def pk_batches(
    dataset: tf.data.Dataset,
    classes_per_batch: int,
    samples_per_class: int,
    *,
    seed: int | None = None,
    num_batches: int | None = None,
    map_fn=None,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """Class-balanced batches: `classes_per_batch` classes × `samples_per_class` each.

    The paper's batches hold 5 images of each class (batch 128). Each pass over
    the returned dataset (each epoch) shuffles the classes and walks through
    them `classes_per_batch` at a time, so every class appears about once per
    epoch. Last-batch rule: when fewer than `classes_per_batch` classes remain,
    the batch is completed with classes drawn from the others, so every batch
    has exactly `classes_per_batch` distinct classes and `P·K` items. A class
    with fewer than `samples_per_class` items contributes all of them plus
    repeats drawn at random.

    `dataset` is read once and kept in memory, so give it stored images
    (before random augmentation) and pass per-epoch augmentation as `map_fn`,
    applied to each sampled `(image, label)`.

    Args:
        dataset: Finite `tf.data.Dataset` of `(x, label)` with integer labels;
            `x` may be a dict, such as `Distiller.cache_teacher_embeddings` gives.
        classes_per_batch: P, distinct classes in each batch.
        samples_per_class: K, items of each class in each batch.
        seed: Makes the batches reproducible: the same seed gives the same
            sequence of batches, epoch after epoch.
        num_batches: Batches per epoch; defaults to `ceil(classes / P)`.
        map_fn: Optional function applied to each sampled `(x, label)`.
        first_epoch: Epoch number of the first pass. A run resumed at epoch
            `e` (`keras.callbacks.BackupAndRestore`) passes `e` to get the
            batches the interrupted run would have seen.

    Returns:
        A `tf.data.Dataset` of `(x, label)` batches of `P·K` items.
    """
    check_int("classes_per_batch", classes_per_batch, low=1)
    check_int("samples_per_class", samples_per_class, low=1)
    if seed is not None:
        check_int("seed", seed, low=0)
    if num_batches is not None:
        check_int("num_batches", num_batches, low=1)
    check_int("first_epoch", first_epoch, low=0)
    if map_fn is not None and not callable(map_fn):
        raise ValueError(f"map_fn must be a function of (x, label), received {map_fn!r}.")
    _check_unbatched(dataset)
    features, labels = materialize(dataset)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Labels must be integers, received {labels.dtype}.")
    labels = labels.astype(np.int64)
    classes, members = np.unique(labels, return_inverse=True)
    if len(classes) < classes_per_batch:
        raise ValueError(
            f"pk_batches needs at least classes_per_batch={classes_per_batch} classes, but the "
            f"dataset has {len(classes)}. Lower classes_per_batch or add classes."
        )
    by_class = [np.flatnonzero(members == c) for c in range(len(classes))]
    if num_batches is None:
        num_batches = -(-len(classes) // classes_per_batch)
    epochs = iter(range(first_epoch, 2**62))

    def batch_indices():
        # One generator per epoch; (seed, epoch) makes every epoch reproducible.
        rng = np.random.default_rng(None if seed is None else (seed, next(epochs)))
        order = rng.permutation(len(classes))
        for _ in range(num_batches):
            if len(order) == 0:
                order = rng.permutation(len(classes))
            chosen, order = order[:classes_per_batch], order[classes_per_batch:]
            if len(chosen) < classes_per_batch:  # last batch: top up with other classes
                others = np.setdiff1d(np.arange(len(classes)), chosen)
                extra = rng.choice(others, classes_per_batch - len(chosen), replace=False)
                chosen = np.concatenate([chosen, extra])
            yield np.concatenate([_draw(rng, by_class[c], samples_per_class) for c in chosen])

    indices = tf.data.Dataset.from_generator(
        batch_indices, output_signature=tf.TensorSpec((classes_per_batch * samples_per_class,), tf.int64)
    ).apply(tf.data.experimental.assert_cardinality(num_batches))
    features = tf.nest.map_structure(tf.constant, features)
    labels = tf.constant(labels)
    items = indices.unbatch().map(
        lambda i: (tf.nest.map_structure(lambda f: tf.gather(f, i), features), tf.gather(labels, i))
    )
    if map_fn is not None:
        items = items.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return items.batch(classes_per_batch * samples_per_class).prefetch(tf.data.AUTOTUNE)


def _draw(rng, members, count):
    """`count` distinct members, or all of them plus random repeats if too few."""
    if len(members) >= count:
        return rng.choice(members, count, replace=False)
    return np.concatenate([members, rng.choice(members, count - len(members))])


def _check_unbatched(dataset):
    """Raises unless `dataset` holds single `(x, label)` examples with a scalar label each."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            f"pk_batches needs a dataset of (x, label) pairs, received elements of {spec}. Map them to "
            "pairs first, e.g. dataset.map(lambda example: (example['image'], example['label']))."
        )
    shape = getattr(spec[1], "shape", None)
    if shape is not None and shape.rank is not None and shape.rank > 0:
        raise ValueError(
            f"pk_batches samples single (x, label) examples, but this dataset's labels have shape "
            f"{tuple(shape)}: it is already batched. Unbatch it first (dataset.unbatch()), or pass the "
            "dataset before its .batch()."
        )


def materialize(dataset, caller="pk_batches"):
    """Reads a finite `(x, label)` dataset into NumPy: `x` (any nest of arrays) and labels."""
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{caller} needs a finite dataset; remove `.repeat()`.")
    features, labels = [], []
    for x, y in dataset.batch(4096).as_numpy_iterator():
        features.append(x)
        labels.append(y)
    if not features:
        raise ValueError(f"{caller} received an empty dataset.")
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *features), np.concatenate(labels)
