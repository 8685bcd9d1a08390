"""Embedding models: backbone → global pooling → Dense(embedding_dim) → optional L2 norm."""

import os
from pathlib import Path

import keras

from rkd_keras.checks import check_choice, check_int
from rkd_keras.choices import BACKBONE_MIN_IMAGE_SIZE, BACKBONES
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
    """Builds `backbone → global average pooling → Dense(embedding_dim) → [L2 norm]`.

    The paper's teacher is `resnet50`, 512-d, L2-normalized; its students are
    `resnet18`, 128-d or 64-d, *without* L2 normalization (better for RKD).

    Args:
        backbone: One of `BACKBONES`: `"small_cnn"` (sized for CPU),
            `"resnet18"`, or a `keras.applications` model (`"resnet50"`, ...).
        embedding_dim: Width of the embedding.
        l2_normalize: Project embeddings onto the unit sphere.
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
    """
    check_choice("backbone", backbone, BACKBONES)
    check_int("embedding_dim", embedding_dim, low=1)
    check_int("width", width, low=1)
    _check_input_shape(backbone, input_shape)
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist; pass the path of a weights file, or None.")
    inputs = keras.Input(input_shape)
    if backbone in _APPLICATIONS:
        build, mode, _ = _APPLICATIONS[backbone]
        extra = {"include_preprocessing": True} if backbone == "mobilenet_v3_small" else {}
        if weights == "imagenet":
            cached = imagenet_weights_file(backbone, input_shape[0])
            offline = f"offline, copy {cached.name} into {cached.parent}, or pass the path of a weights file"
            if not download and not cached.is_file():
                raise WeightsNotAvailableError(
                    f"the ImageNet weights of {backbone} are not in Keras's cache ({cached}) and downloading "
                    f"was not asked for. Pass download=True (CLI: --download) to fetch them; {offline} "
                    "(CLI: --weights PATH), or weights=None (CLI: --weights none) for random weights."
                )
        try:
            net = build(include_top=False, weights=weights, input_shape=input_shape, **extra)
        except Exception as error:
            if weights != "imagenet":
                raise
            raise WeightsNotAvailableError(
                f"could not download the ImageNet weights of {backbone} ({error}); {offline} "
                "(CLI: --weights PATH), or weights=None (CLI: --weights none)."
            ) from error
    else:
        if weights is not None and not str(weights).endswith(".weights.h5"):
            raise ValueError(
                f"{backbone} has no pretrained weights to download; pass weights=None or a path "
                f"to a `.weights.h5` file saved from this backbone, received {weights!r}."
            )
        net = _small_cnn(input_shape, width) if backbone == "small_cnn" else _resnet18(input_shape)
        mode = "tf" if backbone == "small_cnn" else "torch"
        if weights is not None:
            net.load_weights(weights)
    x = ImagePreprocessing(mode)(inputs) if mode else inputs
    x = keras.layers.GlobalAveragePooling2D()(net(x))
    x = keras.layers.Dense(embedding_dim, name="embedding")(x)
    if l2_normalize:
        x = keras.layers.UnitNormalization()(x)
    return keras.Model(inputs, x, name=name or f"{backbone}_{embedding_dim}")


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


def _conv_bn_relu(x, filters, kernel_size=3, strides=1):
    x = keras.layers.Conv2D(filters, kernel_size, strides, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x)


def _small_cnn(input_shape, width):
    """Three conv-BN-ReLU blocks of width, 2·width, 4·width channels."""
    inputs = keras.Input(input_shape)
    x = inputs
    for block, filters in enumerate((width, 2 * width, 4 * width)):
        if block:
            x = keras.layers.MaxPooling2D()(x)
        x = _conv_bn_relu(_conv_bn_relu(x, filters), filters)
    return keras.Model(inputs, x, name="small_cnn")


def _resnet18(input_shape):
    """ResNet-18 (He et al. 2016), the paper's student; not in keras.applications."""
    inputs = keras.Input(input_shape)
    x = _conv_bn_relu(inputs, 64, kernel_size=7, strides=2)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if stage and not block else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides, use_bias=False)(x)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            y = _conv_bn_relu(x, filters, strides=strides)
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = keras.layers.BatchNormalization()(y)
            x = keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
    return keras.Model(inputs, x, name="resnet18")
