"""Losses on intermediate features: FitNet hints (Romero et al. 2015) and attention transfer
(Zagoruyko & Komodakis 2017).

Both compare each example's features with its own teacher features
(per-example). Written with `keras.ops` only, so they run on every Keras backend.
"""

import keras

from rkd_keras.losses.base import as_float32, check_batch, flatten, guard, l2_normalize, magnitude, scaled_eps
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
    teacher = keras.ops.stop_gradient(as_float32(teacher, "Teacher features"))
    student = as_float32(student, "Regressed student features")
    check_batch(teacher, student)
    if tuple(teacher.shape[1:]) != tuple(student.shape[1:]):
        raise ValueError(
            f"FitNet compares features of the same shape, received teacher {tuple(teacher.shape)} and "
            f"regressed student {tuple(student.shape)}. Select layers of equal spatial size; the "
            "HintRegressor only maps the channels."
        )
    difference = student - teacher
    # Squares of `difference / scale` (exact), so features ×1e18 do not overflow before their mean does.
    scale = magnitude(difference)
    return guard(keras.ops.mean(keras.ops.square(difference / scale)) * scale * scale, teacher, student)


def _attention(feature_map, eps=1e-12):
    """Each example's spatial attention: mean of squares over channels, flattened, L2-normalized.

    Each example's map is divided by its `magnitude` first (exact; the
    normalization's `eps` in the same units), so maps ×1e10, whose attention's
    norm overflows float32, give the attention of the map itself.
    """
    scale = magnitude(feature_map, axis=tuple(range(1, len(feature_map.shape))), keepdims=True)
    attention = flatten(keras.ops.mean(keras.ops.square(feature_map / scale), axis=-1))
    return l2_normalize(attention, axis=1, eps=scaled_eps(eps, keras.ops.reshape(scale, (-1, 1))))


def attention_transfer(teacher_map, student_map):
    """Attention transfer: the mean squared difference of normalized spatial attention maps.

    Formula:
    ```
    a(F) = normalize(mean over channels c of F[..., c]², flattened over positions)
    loss = mean over the N × positions entries of (a(F_s) − a(F_t))²
    ```
    `normalize` divides by `max(‖a‖₂, 1e-12)` (PyTorch's `F.normalize`).
    Follows `AttentionTransfer` of the official RKD code (github.com/lenscloth/RKD,
    `metric/loss.py`, commit 92c8563), with channels last (`(N, H, W, C)`)
    where the official code takes channels first. Teacher and student may
    have different channels, not different spatial sizes. A zero map (a dead
    ReLU stage) has attention 0 and a finite gradient.

    Args:
        teacher_map: Teacher feature map `(N, H, W, C_t)` (any rank ≥ 3,
            channels last); no gradient flows into it.
        student_map: Student feature map `(N, H, W, C_s)`.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: The spatial sizes differ (the message names both shapes).

    Example:
    >>> teacher = np.zeros((1, 2, 2, 3), "float32")
    >>> teacher[0, 0, 0] = 1.0  # all attention on one position
    >>> student = np.ones((1, 2, 2, 5), "float32")  # attention 1/2 on every position
    >>> float(attention_transfer(teacher, student))  # mean of (1/2 − 1)², (1/2)², (1/2)², (1/2)²
    0.25
    """
    teacher = keras.ops.stop_gradient(as_float32(teacher_map, "Teacher feature map", min_rank=3))
    student = as_float32(student_map, "Student feature map", min_rank=3)
    check_batch(teacher, student)
    if tuple(teacher.shape[1:-1]) != tuple(student.shape[1:-1]):
        raise ValueError(
            "Attention transfer compares maps of the same spatial size, received teacher "
            f"{tuple(teacher.shape)} and student {tuple(student.shape)} (channels last). Select layers "
            "whose spatial sizes match; only the channels may differ."
        )
    difference = _attention(student) - _attention(teacher)
    return guard(keras.ops.mean(keras.ops.square(difference)), teacher, student)


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
