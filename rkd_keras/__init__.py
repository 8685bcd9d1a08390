"""rkd_keras: Relational Knowledge Distillation for Keras 3 / TensorFlow."""

from rkd_keras import losses
from rkd_keras.distiller import Distiller
from rkd_keras.losses import RKDAngle, RKDDistance, rkd_angle, rkd_distance

__all__ = ["Distiller", "losses", "rkd_distance", "rkd_angle", "RKDDistance", "RKDAngle"]
