"""embedding_model: every backbone builds with weights=None, right width and norm."""

import keras
import numpy as np
import pytest

from rkd_keras import embedding_model
from rkd_keras.choices import BACKBONE_STAGES
from rkd_keras.models import BACKBONES, WeightsNotAvailableError, imagenet_weights_file


# Each backbone once (alternating the norm), small_cnn both ways: big ones are slow to build.
@pytest.mark.parametrize(
    "backbone, l2_normalize", [(b, i % 2 == 0) for i, b in enumerate(BACKBONES)] + [("small_cnn", False)]
)
def test_backbone_builds_with_width_and_norm(backbone, l2_normalize, rng):
    model = embedding_model(backbone, 24, l2_normalize=l2_normalize, input_shape=(32, 32, 3))
    images = rng.uniform(0, 255, size=(3, 32, 32, 3)).astype("float32")
    embeddings = model.predict(images, verbose=0)
    assert embeddings.shape == (3, 24)
    # Flat: the stages a term reads are the model's own layers, at strides 4, 8, 16, 32 (small_cnn: 1, 2, 4).
    strides = [32 // model.get_layer(name).output.shape[1] for name in BACKBONE_STAGES[backbone]]
    assert strides == ([1, 2, 4] if backbone == "small_cnn" else [4, 8, 16, 32])
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    norms = np.linalg.norm(embeddings, axis=1)
    if l2_normalize:
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
        assert np.all(np.abs(norms - 1.0) > 1e-3)


def test_small_cnn_width_sets_the_size_and_accepts_grey_images():
    teacher = embedding_model("small_cnn", 128, input_shape=(28, 28, 1), width=32)
    student = embedding_model("small_cnn", 32, input_shape=(28, 28, 1), width=8, l2_normalize=False)
    assert teacher.count_params() >= 10 * student.count_params()


def test_resnet18_has_the_standard_size():
    model = embedding_model("resnet18", 128, input_shape=(64, 64, 3))
    backbone = model.count_params() - model.get_layer("embedding").count_params()
    # torchvision's 11,176,512 without fc, plus BatchNorm's 9,600 moving means and variances (buffers there).
    assert backbone == 11_176_512 + 9_600


def test_saved_model_loads_without_unsafe_mode(tmp_path, rng):
    model = embedding_model("small_cnn", 8, input_shape=(16, 16, 1), width=4)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    images = rng.uniform(0, 255, size=(2, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(restored.predict(images, verbose=0), model.predict(images, verbose=0))


def test_unknown_backbone_and_unavailable_weights_are_refused():
    with pytest.raises(ValueError, match="backbone must be one of small_cnn, .*; received 'vgg'"):
        embedding_model("vgg", 8)
    with pytest.raises(ValueError, match="resnet18 has no pretrained weights"):
        embedding_model("resnet18", 8, weights="imagenet")


class _Fetched(Exception):
    """Raised instead of downloading: the test only needs the name Keras asked for."""


@pytest.mark.parametrize(
    "backbone, size, cached",
    [("resnet50", 32, False), ("resnet101", 32, True), ("mobilenet_v2", 96, False), ("mobilenet_v2", 40, True),
     ("mobilenet_v3_small", 32, False), ("efficientnet_b0", 32, True)],  # fmt: skip
)
def test_imagenet_weights_file_is_the_one_keras_fetches(backbone, size, cached, tmp_path, monkeypatch):
    """With download=True, or with the file already in Keras's cache, Keras is asked for exactly that file."""
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    expected = imagenet_weights_file(backbone, size)
    assert expected.parent == tmp_path / "models"
    if cached:
        expected.parent.mkdir()
        expected.write_bytes(b"")
    requested = []

    def fetch(fname, *args, **kwargs):
        requested.append(fname)
        raise _Fetched

    monkeypatch.setattr(file_utils, "get_file", fetch)
    with pytest.raises(WeightsNotAvailableError) as error:
        embedding_model(backbone, 8, input_shape=(size, size, 3), weights="imagenet", download=not cached)
    assert isinstance(error.value.__cause__, _Fetched)
    assert requested == [expected.name]
