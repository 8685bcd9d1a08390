"""Registration of rkd_keras's layers, losses and models with Keras serialization."""

import keras

PACKAGE = "rkd_keras"


def register(cls):
    """Registers `cls` as `rkd_keras>ClassName`, the name `.keras` files store."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
