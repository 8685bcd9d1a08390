"""Losses of rkd_keras: each a plain function of tensors, with a `keras.losses.Loss` wrapper.

Distillation losses take `(teacher, student)`: the teacher side carries no
gradient, and the computation runs in float32 also under mixed precision.
`get(name)` gives the wrapper of a loss by its function's name.
"""

import keras

from rkd_keras.losses.features import HintRegressor, attention_transfer, fitnet
from rkd_keras.losses.logits import dist_kd, hinton_kd
from rkd_keras.losses.relational import correlation_congruence, dark_rank, pkt, similarity_preserving
from rkd_keras.losses.rkd import rkd_angle, rkd_distance
from rkd_keras.losses.triplet import TRIPLET_SAMPLINGS, triplet_loss
from rkd_keras.losses.wrappers import (
    PKT,
    AttentionTransfer,
    CorrelationCongruence,
    DarkRank,
    DistKD,
    FitNet,
    HintonKD,
    LossWrapper,
    RKDAngle,
    RKDDistance,
    SimilarityPreserving,
    TripletLoss,
)

# Function name → wrapper class: the names `get` and `Term("...")` accept.
LOSSES = {
    "rkd_distance": RKDDistance,
    "rkd_angle": RKDAngle,
    "dark_rank": DarkRank,
    "similarity_preserving": SimilarityPreserving,
    "pkt": PKT,
    "correlation_congruence": CorrelationCongruence,
    "dist_kd": DistKD,
    "hinton_kd": HintonKD,
    "attention_transfer": AttentionTransfer,
    "fitnet": FitNet,
    "triplet_loss": TripletLoss,
}


def get(identifier) -> keras.losses.Loss:
    """The `keras.losses.Loss` for a loss name, a `Loss` instance or a function.

    Args:
        identifier: A name of `LOSSES` (e.g. `"rkd_angle"`), a
            `keras.losses.Loss` (returned as is), or a function
            `fn(teacher, student) -> scalar` (wrapped; treated as relational).

    Returns:
        A `keras.losses.Loss`.

    Example:
    >>> get("rkd_angle").name
    'rkd_angle'
    """
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if isinstance(identifier, str):
        if identifier not in LOSSES:
            raise ValueError(f"Unknown loss {identifier!r}; choose one of {', '.join(LOSSES)}, or pass a function.")
        return LOSSES[identifier]()
    if callable(identifier):
        return LossWrapper(identifier, name=getattr(identifier, "__name__", "loss"))
    raise TypeError(
        f"A loss must be a name ({', '.join(LOSSES)}), a keras.losses.Loss or a function, "
        f"received {type(identifier).__name__}."
    )


__all__ = [
    "get",
    "LOSSES",
    "rkd_distance",
    "rkd_angle",
    "dark_rank",
    "similarity_preserving",
    "pkt",
    "correlation_congruence",
    "dist_kd",
    "hinton_kd",
    "attention_transfer",
    "fitnet",
    "triplet_loss",
    "RKDDistance",
    "RKDAngle",
    "DarkRank",
    "SimilarityPreserving",
    "PKT",
    "CorrelationCongruence",
    "DistKD",
    "HintonKD",
    "AttentionTransfer",
    "FitNet",
    "HintRegressor",
    "TripletLoss",
    "LossWrapper",
    "TRIPLET_SAMPLINGS",
]
