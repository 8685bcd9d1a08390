"""Embedding models: backbone → global pooling → Dense(embedding_dim) → optional L2 norm."""

import keras

from rkd_keras.saving import register

# backbone → (builder, ImageNet preprocessing mode of its weights). `None`:
# the keras.applications model normalizes its inputs itself.
_APPLICATIONS = {
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "resnet101": (keras.applications.ResNet101, "caffe"),
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small, None),
    "efficientnet_b0": (keras.applications.EfficientNetB0, None),
}
BACKBONES = ("small_cnn", "resnet18", *_APPLICATIONS)


class WeightsNotAvailableError(RuntimeError):
    """Pretrained weights could not be downloaded (no internet)."""


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
            backbones (needs internet), or a path to a backbone weights file.
        width: Channels of the first `small_cnn` block (doubled per block).
        name: Model name; defaults to `"{backbone}_{embedding_dim}"`.

    Returns:
        A functional `keras.Model` from images to `(batch, embedding_dim)`.

    Example:
    >>> student = embedding_model("resnet18", 64, l2_normalize=False)
    """
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    inputs = keras.Input(input_shape)
    if backbone in _APPLICATIONS:
        build, mode = _APPLICATIONS[backbone]
        extra = {"include_preprocessing": True} if backbone == "mobilenet_v3_small" else {}
        try:
            net = build(include_top=False, weights=weights, input_shape=input_shape, **extra)
        except Exception as error:
            if weights != "imagenet":
                raise
            raise WeightsNotAvailableError(
                f"could not download the ImageNet weights of {backbone} ({error}). Offline, pass "
                "weights=None (CLI: --weights none) or the path of a weights file."
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
