"""Your own images: a folder with one subfolder of images per class, the layout every image tool reads.

```
DIR/
  ankle_boot/  0001.png  0002.png ...
  bag/         ...
```

A class is a subfolder of DIR (nested folders inside it belong to it), its
label the index of its name among the sorted names. Images are PNG, JPEG,
BMP or GIF (the first frame), of any size: they are resized as every
dataset's images are (`data.preprocess_image`). Other files and hidden files
are skipped, and their count is reported once.

Plain Python, no TensorFlow: the command line reads a folder's classes and
checks them before the library loads; `data.load_dataset("folder", ...)`
decodes the images.

The splits, like the named datasets':
- Metric learning: class-disjoint. The first half of the sorted classes
  (rounded up) train, the others are the unseen test classes; `classes`
  chooses other training classes, by name or by label.
- Classification: every class; `TEST_FRACTION` of each class's images (at
  least one) are held out for test, the same images in every run.
"""

import dataclasses
import functools
import math
import os
import random
import warnings
from pathlib import Path

from rkd_keras import checks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Classification: the share of each class's images held out for test.
TEST_FRACTION = 0.2
# The images are listed in one fixed shuffled order (as tensorflow-datasets and
# keras.utils.image_dataset_from_directory list theirs), so that a validation
# hold-out, `max_train_items` or `max_eval_items` reads every class, not the
# first ones in alphabetical order. The seed is not the run's: every run of a
# folder splits it alike.
_ORDER_SEED = 0


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A scanned image folder.

    Attributes:
        root: The folder.
        class_names: The classes, sorted; a label is an index into them.
        files: Every image's path relative to `root` (POSIX separators), in the fixed shuffled order.
        labels: Every image's label, in the same order.
        skipped: The number of files skipped: hidden, or not PNG, JPEG, BMP or GIF.
    """

    root: str
    class_names: tuple
    files: tuple
    labels: tuple
    skipped: int

    def counts(self) -> list:
        """The number of images of each class."""
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def labels_of(self, classes, what: str = "classes") -> list:
        """`classes` (names or labels) as labels, refusing those the folder does not have."""
        index = {name: label for label, name in enumerate(self.class_names)}
        labels, unknown = [], []
        for value in checks.check_classes(what, classes, names=True):
            label = index.get(value) if isinstance(value, str) else value if value < len(self.class_names) else None
            (unknown if label is None else labels).append(value if label is None else label)
        if unknown:
            raise ValueError(
                f"{what} {unknown} are not classes of the image folder {self.root}, whose {len(self.class_names)} "
                f"classes are {_shown_names(self.class_names)} (labels 0–{len(self.class_names) - 1})."
            )
        return checks.check_classes(what, labels)  # a name and its label given both are one class twice

    def default_train_classes(self) -> list:
        """Metric learning's training labels: the first half of the sorted classes, rounded up."""
        return list(range((len(self.class_names) + 1) // 2))


def _shown_names(names, most=8):
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _hidden(name):
    return name.startswith(".")


def scan(path) -> ImageFolder:
    """The classes and images of the folder `path`, read once per process while its class folders are unchanged.

    Raises:
        FileNotFoundError: `path` does not exist.
        NotADirectoryError: `path` is a file.
        ValueError: it holds no class folder, or a class folder holds no image.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist; give the folder that holds one subfolder per class.")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} is a file; give the folder that holds one subfolder per class.")
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
        # Each class folder's time stamp: a file added or removed in it is seen by the next scan.
        signature = tuple(
            (entry.name, entry.stat().st_mtime_ns) for entry in entries if entry.is_dir() and not _hidden(entry.name)
        )
    except OSError as error:
        raise PermissionError(f"image folder {root} cannot be read: {error.strerror or error}.") from error
    return _scan(str(root), signature, sum(1 for entry in entries if not entry.is_dir()))


@functools.lru_cache(maxsize=8)
def _scan(root, signature, loose_files):
    if not signature:
        raise ValueError(
            f"image folder {root} holds no class folders; put each class's images in a subfolder named after the class "
            "(DIR/CLASS/IMAGE.png)."
        )
    files, labels, skipped = [], [], loose_files
    class_names = tuple(name for name, _ in signature)
    for label, name in enumerate(class_names):
        found = 0
        for folder, subfolders, names in os.walk(Path(root) / name, onerror=_raise):
            subfolders[:] = sorted(sub for sub in subfolders if not _hidden(sub))
            for file in sorted(names):
                if _hidden(file) or not file.lower().endswith(IMAGE_SUFFIXES):
                    skipped += 1
                    continue
                files.append(Path(folder, file).relative_to(root).as_posix())
                labels.append(label)
                found += 1
        if not found:
            raise ValueError(
                f"image folder {root}: the class folder {name}/ holds no images (PNG, JPEG, BMP or GIF); add images "
                "or remove the folder."
            )
    if skipped:
        warnings.warn(
            f"image folder {root}: skipped {skipped} files that are hidden or not PNG, JPEG, BMP or GIF images.",
            stacklevel=3,
        )
    order = list(range(len(files)))
    random.Random(_ORDER_SEED).shuffle(order)
    return ImageFolder(root, class_names, tuple(files[i] for i in order), tuple(labels[i] for i in order), skipped)


def _raise(error):
    raise PermissionError(f"{error.filename} cannot be read: {error.strerror or error}.")


def split(folder: ImageFolder, split: str, *, task: str = "metric", classes=None) -> tuple:
    """The images of a split, before any validation hold-out: `(files, labels)`, both lists.

    Args:
        folder: The scanned folder.
        split: `"train"` (and validation, held out of it) or `"test"`.
        task: `"metric"`: the training classes or the unseen others; `"classification"`:
            every class, `TEST_FRACTION` of each class's images (at least one) for test.
        classes: The classes to keep (names or labels), as `load_dataset`'s `classes`: for metric
            learning instead of the default split (the first half of the sorted classes train).

    Raises:
        ValueError: an unknown class; for classification, a class of one image (none would train).
    """
    total = len(folder.class_names)
    if classes is not None:
        keep = set(folder.labels_of(classes))
    elif task == "classification":
        keep = set(range(total))
    else:
        train = set(folder.default_train_classes())
        keep = train if split != "test" else set(range(total)) - train
    if task != "classification":
        chosen = [(file, label) for file, label in zip(folder.files, folder.labels) if label in keep]
        return [file for file, _ in chosen], [label for _, label in chosen]
    counts = folder.counts()
    single = [folder.class_names[label] for label in sorted(keep) if counts[label] < 2]
    if single:
        raise ValueError(
            f"image folder {folder.root}: the class {single[0]} has 1 image; classification holds out "
            f"{TEST_FRACTION:.0%} of each class's images (at least one) for test, so each class needs at least 2."
        )
    seen, held, chosen = [0] * total, [math.ceil(count * TEST_FRACTION) for count in counts], []
    for file, label in zip(folder.files, folder.labels):
        test = seen[label] < held[label]  # each class's first images in the fixed order
        seen[label] += 1
        if label in keep and test == (split == "test"):
            chosen.append((file, label))
    return [file for file, _ in chosen], [label for _, label in chosen]
