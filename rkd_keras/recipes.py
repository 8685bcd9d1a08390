"""A recipe's settings as the objects they name: the optimizer with its schedule, the resize rule, the network.

A recipe is a mapping of the settings `rkd_keras.presets` holds
(`presets.get("cub200", "teacher")`) and a config file or the command line
sets; only the keys a function reads need be there. The command line and
`examples/cub200_recipe.py` both build from here, so a recipe trains the same
by either route.

Example:
>>> from rkd_keras import presets
>>> recipe = presets.get("cub200", "student")
>>> network(recipe).output.shape  # ResNet18 → 128-d, not L2-normalized
(None, 128)
>>> adam = optimizer(recipe)  # Adam 1e-4, ÷10 after epochs 40 and 60 (of 100 steps)
>>> _ = adam.iterations.assign(6001)
>>> round(float(adam.learning_rate), 7)
1e-06
"""

import keras

from rkd_keras.data import default_resize_size
from rkd_keras.models import classifier_model, embedding_model


def optimizer(recipe) -> keras.optimizers.Adam:
    """Adam with the recipe's weight decay and step decay of the learning rate, as the paper trains.

    Reads `learning_rate`, `lr_decay_epochs` (epochs after which the rate is
    multiplied by `lr_decay_factor`), `steps_per_epoch` and `weight_decay`
    (0 or None: none).

    >>> adam = optimizer({"learning_rate": 1e-4, "lr_decay_epochs": [40, 60], "lr_decay_factor": 0.1,
    ...                   "steps_per_epoch": 100, "weight_decay": 1e-5})
    >>> rates = []
    >>> for step in (0, 4000, 4001, 6001):
    ...     _ = adam.iterations.assign(step)
    ...     rates.append(round(float(adam.learning_rate), 7))
    >>> rates, adam.weight_decay
    ([0.0001, 0.0001, 1e-05, 1e-06], 1e-05)
    """
    learning_rate = recipe["learning_rate"]
    boundaries = [epoch * recipe["steps_per_epoch"] for epoch in recipe.get("lr_decay_epochs") or ()]
    if boundaries:
        values = [learning_rate * recipe["lr_decay_factor"] ** i for i in range(len(boundaries) + 1)]
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return keras.optimizers.Adam(learning_rate, weight_decay=recipe.get("weight_decay") or None)


def resize_size(recipe) -> int:
    """The side training images are stored at and test images resized to before the crop to `image_size`.

    The recipe's `resize_size`, else the paper's rule for its task
    (`rkd_keras.data.default_resize_size`: 256 for 224 crops in metric
    learning, no resize in classification).

    >>> resize_size({"image_size": 224}), resize_size({"image_size": 32, "task": "classification"})
    (256, 32)
    """
    return recipe.get("resize_size") or default_resize_size(recipe["image_size"], recipe.get("task", "metric"))


def network(recipe, *, num_classes: int | None = None, name: str | None = None, download: bool = False) -> keras.Model:
    """The model the recipe trains: an embedding model (metric learning), or a classifier of `num_classes`.

    Reads `backbone`, `embedding_dim` and `l2_normalize` (metric learning),
    `image_size` and `channels` (3 if absent), `weights` (None if absent) and
    `width` (the backbone's default if absent).
    """
    options = dict(
        input_shape=(recipe["image_size"], recipe["image_size"], recipe.get("channels", 3)),
        weights=recipe.get("weights"), download=download,
    )
    if recipe.get("width") is not None:
        options["width"] = recipe["width"]
    if recipe.get("task", "metric") == "classification":
        if num_classes is None:
            raise ValueError("A classification recipe's network needs num_classes (rkd_keras.num_classes(dataset, 'train')).")
        return classifier_model(recipe["backbone"], num_classes, name=name or "classifier", **options)
    return embedding_model(
        recipe["backbone"], recipe["embedding_dim"], l2_normalize=recipe["l2_normalize"], name=name or "embedding",
        **options,
    )
