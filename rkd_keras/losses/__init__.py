"""Losses of rkd_keras: each a plain function of tensors, with a `keras.losses.Loss` wrapper.

Distillation losses take `(teacher, student)`: the teacher side carries no
gradient, and the computation runs in float32 also under mixed precision.
"""

from rkd_keras.losses.rkd import rkd_angle, rkd_distance
from rkd_keras.losses.triplet import TRIPLET_SAMPLINGS, triplet_loss
from rkd_keras.losses.wrappers import LossWrapper, RKDAngle, RKDDistance, TripletLoss

__all__ = [
    "rkd_distance",
    "rkd_angle",
    "triplet_loss",
    "RKDDistance",
    "RKDAngle",
    "TripletLoss",
    "LossWrapper",
    "TRIPLET_SAMPLINGS",
]
