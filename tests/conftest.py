"""Shared fixtures and builders of the test suite: tiny models, synthetic and mocked data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the same seeds and the default dtype policy."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def pytest_runtest_setup(item):
    """Fails a grouped test that an xdist worker received without its group.

    The backend tests share one expensive fixture per module and are grouped
    onto one worker (`--dist loadgroup`). With pytest 9.2, pytest-xdist 3.8's
    grouping is silently a no-op (pytest-dev/pytest-xdist#1386): each worker
    computed the reference (+4 minutes). setup.cfg pins pytest below 9.2.
    """
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group"):
        if "@" not in item.nodeid:  # xdist appends "@group" to the ids of grouped tests
            pytest.fail(
                f"--dist loadgroup ignored this test's xdist_group: pytest {pytest.__version__} with this "
                "pytest-xdist does not group (pytest-dev/pytest-xdist#1386). Install the test extra's "
                "versions: pip install -e '.[test]'.",
                pytrace=False,
            )


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def mlp(hidden, out, name, inputs=12):
    """Dense → ReLU → BatchNorm → Dense: a functional model with BatchNorm statistics."""
    x = keras.Input((inputs,))
    h = keras.layers.Dense(hidden, activation="relu")(x)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(x, keras.layers.Dense(out)(h), name=name)


@pytest.fixture
def clusters(rng):
    """320 points in 8 Gaussian clusters, 12-d, with their cluster labels."""
    centers = 4.0 * rng.normal(size=(8, 12))
    labels = rng.integers(0, 8, 320)
    return (centers[labels] + rng.normal(size=(320, 12))).astype(np.float32), labels


@pytest.fixture
def teacher(clusters):
    """A teacher whose BatchNorm statistics are not the defaults."""
    model = mlp(64, 32, "teacher")
    model(clusters[0], training=True)
    model.layers[2].moving_mean.assign(np.linspace(-1, 1, 64))
    return model


def listing(folder):
    """Every path under `folder` with its size and modification time: equal listings, nothing written or deleted."""
    return sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*"))


def mock_cub(self, split, decoders=None, read_config=None, **kwargs):
    """`as_dataset_fn` for `tfds.testing.mock_data`: 2 images of each of CUB's 200 classes per split."""
    import tensorflow as tf

    rng = np.random.default_rng({"train": 0, "test": 1}[str(split)])
    labels = np.tile(np.arange(200, dtype=np.int64), 2)
    images = rng.integers(0, 255, size=(len(labels), 12, 10, 3), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


class UnpreparedBuilder:
    """A tfds builder with nothing prepared, whose download fails: no network, nothing written."""

    def __init__(self, name, data_dir=None):
        self.data_dir = f"{data_dir}/{name}/1.0.0"

    def is_prepared(self):
        return False

    def download_and_prepare(self, download_config=None):
        raise ConnectionError("no network (mocked)")
