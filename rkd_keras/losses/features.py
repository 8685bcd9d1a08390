"""Losses on intermediate features: FitNet hints (Romero et al. 2015)."""

import keras

from rkd_keras.saving import register


def fitnet(teacher, student):
    """FitNet hint loss: the mean squared difference of the teacher's and the regressed student's features.

    Formula: `loss = mean over every element of (r(s) − t)²`, where `r` is
    the student's `HintRegressor`, applied before this function (a
    `Term` whose loss is `FitNet` adds and trains the regressor).
    Follows `FitNet.forward` of the official RKD code (github.com/lenscloth/RKD,
    `metric/loss.py`): `(self.transform(student) - teacher).pow(2).mean()`.

    Args:
        teacher: Teacher features `(N, ...)`; no gradient flows into them.
        student: Regressed student features, the teacher's shape.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.ones((2, 4, 4, 8), "float32")
    >>> float(fitnet(teacher, np.zeros((2, 4, 4, 8), "float32")))
    1.0
    """
    teacher = keras.ops.stop_gradient(keras.ops.cast(teacher, "float32"))
    student = keras.ops.cast(student, "float32")
    if tuple(teacher.shape[1:]) != tuple(student.shape[1:]):
        raise ValueError(
            f"FitNet compares features of the same shape, received teacher {tuple(teacher.shape)} and "
            f"regressed student {tuple(student.shape)}. Select layers of equal spatial size; the "
            "HintRegressor only maps the channels."
        )
    return keras.ops.mean(keras.ops.square(student - teacher))


@register
class HintRegressor(keras.layers.Layer):
    """FitNet's regressor: a bias-free linear map of the student's channels to the teacher's.

    On `(N, H, W, C)` maps it is the official 1×1 convolution
    (`nn.Conv2d(in, out, 1, bias=False)`); on `(N, C)` vectors the same map
    as a Dense layer without bias. Weights start uniform in [−0.005, 0.005],
    as the official code initialises them (lenscloth/RKD `metric/loss.py`,
    `FitNet.__init__`).

    Args:
        channels: The teacher's channels (last axis).

    Example:
    >>> regressor = HintRegressor(16)
    >>> tuple(regressor(np.ones((2, 4, 4, 8), "float32")).shape)
    (2, 4, 4, 16)
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.channels),
            initializer=keras.initializers.RandomUniform(-0.005, 0.005),
            name="kernel",
        )

    def call(self, features):
        # A 1×1 convolution of channels-last maps is a product over the last axis.
        return keras.ops.matmul(features, self.kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
