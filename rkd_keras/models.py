"""Embedding and classifier models on one set of backbones, flat and with stable layer names.

`embedding_model`: backbone → `pool` (global average pooling) → `embedding`
(Dense) → optional L2 norm. `classifier_model`: backbone → `pool` → `logits`.
Every backbone layer sits at the top level of the returned functional model
(no nested sub-model), so a distillation `Term` can read any of them by
name: `choices.BACKBONE_STAGES` names each backbone's stage outputs
(`stage1`, `stage2`, ... for rkd_keras's `small_cnn` and `resnet18`; the
keras.applications names for the others), and `pool` is the pooled feature
vector under the head.
"""

import os
from pathlib import Path

import keras

from rkd_keras.checks import check_choice, check_int
from rkd_keras.choices import BACKBONE_MIN_IMAGE_SIZE, BACKBONE_STAGES, BACKBONES
from rkd_keras.saving import register

# backbone → (builder, ImageNet preprocessing mode of its weights, file name
# of its ImageNet weights without the top, as keras.applications caches it).
# `None` mode: the keras.applications model normalizes its inputs itself.
_APPLICATIONS = {
    "resnet50": (keras.applications.ResNet50, "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet101": (keras.applications.ResNet101, "caffe", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": (
        keras.applications.MobileNetV2,
        "tf",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
    ),
    "mobilenet_v3_small": (
        keras.applications.MobileNetV3Small,
        None,
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    ),
    "efficientnet_b0": (keras.applications.EfficientNetB0, None, "efficientnetb0_notop.h5"),
}


class WeightsNotAvailableError(RuntimeError):
    """Pretrained weights are not on this machine and were not allowed to download, or could not be."""


def imagenet_weights_file(backbone: str, image_size: int = 224) -> Path:
    """Where Keras keeps the ImageNet weights of a backbone once downloaded.

    `$KERAS_HOME/models/` (default `~/.keras/models/`), or `/tmp/.keras/models/`
    when that is not writable, as `keras.utils.get_file` chooses. Copy the
    file there to use the weights on a machine without internet.

    Example:
    >>> imagenet_weights_file("resnet50").name
    'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'
    """
    if backbone not in _APPLICATIONS:
        raise ValueError(f"{backbone} has no ImageNet weights; those of {', '.join(_APPLICATIONS)} do.")
    # MobileNetV2 has weights for these input sizes and uses the 224 ones for any other.
    rows = image_size if image_size in (96, 128, 160, 192, 224) else 224
    name = _APPLICATIONS[backbone][2].format(rows=rows)
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())
    candidates = [home / "models" / name, Path("/tmp/.keras/models") / name]
    return next((path for path in candidates if path.is_file()), candidates[0])


@register
class ImagePreprocessing(keras.layers.Layer):
    """Maps images in [0, 255] to what a backbone's weights expect.

    The single place where inputs are normalized: loaders yield [0, 255].
    `mode` is that of `keras.applications.imagenet_utils.preprocess_input`.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        # A copy: on PyTorch preprocess_input divides and subtracts in place, which changed the
        # caller's batch (a Distiller's teacher then left the student preprocessed inputs).
        return keras.applications.imagenet_utils.preprocess_input(keras.ops.copy(images), mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _check_weights(backbone, weights, download, input_shape):
    """Refuses weights that cannot be loaded, before anything is built."""
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist; pass the path of a weights file, or None.")
    if backbone not in _APPLICATIONS:
        if weights is not None and not str(weights).endswith(".weights.h5"):
            raise ValueError(
                f"{backbone} has no pretrained weights to download; pass weights=None or a path "
                f"to a `.weights.h5` file saved from this backbone, received {weights!r}."
            )
        return
    if weights == "imagenet" and not download:
        cached = imagenet_weights_file(backbone, input_shape[0])
        if not cached.is_file():
            raise WeightsNotAvailableError(
                f"the ImageNet weights of {backbone} are not in Keras's cache ({cached}) and downloading "
                f"was not asked for. Pass download=True (CLI: --download) to fetch them; {_offline(cached)} "
                "(CLI: --weights PATH), or weights=None (CLI: --weights none) for random weights."
            )


def _offline(cached):
    return f"offline, copy {cached.name} into {cached.parent}, or pass the path of a weights file"


def _backbone_features(backbone: str, inputs, *, weights=None, width: int = 32):
    """Applies a backbone to `inputs` (images in [0, 255]) in the caller's graph; returns its feature map.

    Every layer is created here on the caller's symbolic tensors, so the
    model built from them holds the backbone's layers at its top level
    (their names in `choices.BACKBONE_STAGES`). The backbone normalizes its
    inputs itself (an `ImagePreprocessing` layer, or the keras.applications
    model's own). keras.applications backbones are built with
    `input_tensor=`; `weights` (`"imagenet"` or a file) are loaded into the
    backbone's layers.
    """
    if backbone in _APPLICATIONS:
        build, mode, _ = _APPLICATIONS[backbone]
        x = ImagePreprocessing(mode)(inputs) if mode else inputs
        extra = {"include_preprocessing": True} if backbone == "mobilenet_v3_small" else {}
        try:
            net = build(include_top=False, weights=weights, input_tensor=x, input_shape=tuple(inputs.shape[1:]), **extra)
        except Exception as error:
            if weights != "imagenet":
                raise
            cached = imagenet_weights_file(backbone, inputs.shape[1])
            raise WeightsNotAvailableError(
                f"could not download the ImageNet weights of {backbone} ({error}); {_offline(cached)} "
                "(CLI: --weights PATH), or weights=None (CLI: --weights none)."
            ) from error
        return net.output
    mode = "tf" if backbone == "small_cnn" else "torch"
    x = ImagePreprocessing(mode)(inputs)
    features = _small_cnn(x, width) if backbone == "small_cnn" else _resnet18(x)
    if weights is not None:
        # The backbone's layers, from its normalized input to its features: what a saved backbone held.
        keras.Model(x, features, name=backbone).load_weights(weights)
    return features


def embedding_model(
    backbone: str = "small_cnn",
    embedding_dim: int = 128,
    *,
    l2_normalize: bool = True,
    input_shape=(224, 224, 3),
    weights=None,
    width: int = 32,
    name: str | None = None,
    download: bool = False,
) -> keras.Model:
    """Builds `backbone → pool (global average pooling) → embedding (Dense) → [L2 norm]`.

    The paper's teacher is `resnet50`, 512-d, L2-normalized; its students are
    `resnet18`, 128-d or 64-d, *without* L2 normalization (better for RKD).
    The model is flat: its backbone's stage outputs (`choices.BACKBONE_STAGES`,
    e.g. `stage1`–`stage3` of `small_cnn`), `pool` and `embedding` are its own
    layers, which distillation terms select by name.

    Args:
        backbone: One of `BACKBONES`: `"small_cnn"` (sized for CPU),
            `"resnet18"`, or a `keras.applications` model (`"resnet50"`, ...).
        embedding_dim: Width of the embedding.
        l2_normalize: Project embeddings onto the unit sphere (layer `l2_normalize`).
        input_shape: `(height, width, channels)` of the [0, 255] images.
        weights: `None` (random), `"imagenet"` for `keras.applications`
            backbones, or the path of a backbone weights file.
        width: Channels of the first `small_cnn` block (doubled per block).
        name: Model name; defaults to `"{backbone}_{embedding_dim}"`.
        download: Let Keras download the ImageNet weights when they are not
            in its cache yet (see `imagenet_weights_file`). Off by default,
            as for datasets: nothing is fetched from the network unless asked.

    Returns:
        A functional `keras.Model` from images to `(batch, embedding_dim)`.

    Raises:
        WeightsNotAvailableError: `weights="imagenet"`, not in Keras's cache,
            and `download=False` (or the download failed).

    Example:
    >>> student = embedding_model("resnet18", 64, l2_normalize=False)
    >>> student.get_layer("stage4").output.shape, student.get_layer("pool").output.shape
    ((None, 7, 7, 512), (None, 512))
    """
    check_int("embedding_dim", embedding_dim, low=1)
    inputs, pooled = _pooled_features(backbone, input_shape, weights, width, download)
    x = keras.layers.Dense(embedding_dim, name="embedding")(pooled)
    if l2_normalize:
        x = keras.layers.UnitNormalization(name="l2_normalize")(x)
    return keras.Model(inputs, x, name=name or f"{backbone}_{embedding_dim}")


def classifier_model(
    backbone: str = "small_cnn",
    num_classes: int = 10,
    *,
    input_shape=(224, 224, 3),
    weights=None,
    width: int = 32,
    name: str | None = None,
    download: bool = False,
) -> keras.Model:
    """Builds `backbone → pool (global average pooling) → logits (Dense)`, a classifier.

    The same backbones as `embedding_model`, flat, with the same layer names:
    the paper's classification recipe puts RKD on `pool` (the last pooling
    layer, the pre-logit features) and Hinton's KD on the output, the logits.
    Train it with `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.

    Args:
        backbone: One of `BACKBONES`.
        num_classes: Number of classes, the width of `logits`.
        input_shape: `(height, width, channels)` of the [0, 255] images.
        weights: `None` (random), `"imagenet"` for `keras.applications`
            backbones, or the path of a backbone weights file.
        width: Channels of the first `small_cnn` block (doubled per block).
        name: Model name; defaults to `"{backbone}_classifier"`.
        download: Let Keras download missing ImageNet weights.

    Returns:
        A functional `keras.Model` from images to `(batch, num_classes)` logits.

    Raises:
        WeightsNotAvailableError: as `embedding_model`.

    Example:
    >>> teacher = classifier_model("small_cnn", 10, input_shape=(28, 28, 1), width=32)
    >>> [teacher.get_layer(layer).output.shape[1:] for layer in ("stage3", "pool", "logits")]
    [(7, 7, 128), (128,), (10,)]
    """
    check_int("num_classes", num_classes, low=2)
    inputs, pooled = _pooled_features(backbone, input_shape, weights, width, download)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(inputs, logits, name=name or f"{backbone}_classifier")


def _pooled_features(backbone, input_shape, weights, width, download):
    """The checked input and the `pool` layer's output of a flat model on `backbone`."""
    check_choice("backbone", backbone, BACKBONES)
    check_int("width", width, low=1)
    _check_input_shape(backbone, input_shape)
    _check_weights(backbone, weights, download, input_shape)
    inputs = keras.Input(input_shape)
    features = _backbone_features(backbone, inputs, weights=weights, width=width)
    return inputs, keras.layers.GlobalAveragePooling2D(name="pool")(features)


def _check_input_shape(backbone, input_shape):
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(side, int) and not isinstance(side, bool) for side in shape):
        raise ValueError(f"input_shape must be (height, width, channels) integers, received {input_shape!r}.")
    smallest = BACKBONE_MIN_IMAGE_SIZE[backbone]
    if min(shape[:2]) < smallest:
        raise ValueError(
            f"{backbone} needs images of at least {smallest}×{smallest} pixels, received input_shape {shape}."
        )
    check_int("channels of input_shape", shape[2], low=1)


# PyTorch's BatchNorm momentum (0.1 there, the weight of the new batch), which
# the reference ResNets train with. Keras's default 0.99 averages the statistics
# over ~100 steps: in runs of a few hundred steps at Adam 3e-3 they lag the
# weights (a Fashion-MNIST classifier after 480 steps: 79.6 % validation accuracy
# with its moving statistics, 87.7 % with batch statistics).
BATCH_NORM_MOMENTUM = 0.9


def _batch_norm():
    return keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)


def _conv_bn_relu(x, filters, kernel_size=3, strides=1, name=None):
    x = keras.layers.Conv2D(filters, kernel_size, strides, padding="same", use_bias=False)(x)
    x = _batch_norm()(x)
    return keras.layers.ReLU(name=name)(x)


def _small_cnn(x, width):
    """Three conv-BN-ReLU blocks of width, 2·width, 4·width channels; block i ends in layer `stage{i}`."""
    names = BACKBONE_STAGES["small_cnn"]
    for block, filters in enumerate((width, 2 * width, 4 * width)):
        if block:
            x = keras.layers.MaxPooling2D()(x)
        x = _conv_bn_relu(_conv_bn_relu(x, filters), filters, name=names[block])
    return x


def _resnet18(x):
    """ResNet-18 (He et al. 2016), the paper's student; not in keras.applications. Stage i ends in `stage{i}`."""
    names = BACKBONE_STAGES["resnet18"]
    x = _conv_bn_relu(x, 64, kernel_size=7, strides=2)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if stage and not block else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides, use_bias=False)(x)
                shortcut = _batch_norm()(shortcut)
            y = _conv_bn_relu(x, filters, strides=strides)
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = _batch_norm()(y)
            x = keras.layers.ReLU(name=names[stage] if block == 1 else None)(keras.layers.Add()([shortcut, y]))
    return x
