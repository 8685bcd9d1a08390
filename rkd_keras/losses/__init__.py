"""Losses of rkd_keras: each a plain function of tensors, with a `keras.losses.Loss` wrapper.

Distillation losses take `(teacher, student)` and return a float32 scalar of
shape `()`. `get(name)` gives the wrapper of a loss by its function's name;
`LOSSES` maps every name to its wrapper class.

Relational (they compare relations across the batch, so teacher and student
may have different widths, and they need the whole batch at once):
`rkd_distance`, `rkd_angle`, `dark_rank`, `similarity_preserving`, `pkt`,
`correlation_congruence`, `relaxed_contrastive`, `dist_kd` (its intra-class
term), and the `triplet_loss` and `prototypical_loss` of `(labels, embeddings)`. Per-example (each
example compared with its own teacher output): `hinton_kd`, `dkd`,
`attention_transfer`, `fitnet`. `dkd` also reads the class labels,
`dkd(teacher, student, labels)`; its wrapper says so (`uses_labels`).

Rules every loss keeps:

- The teacher side carries no gradient.
- Inputs in float16 or bfloat16 are cast to float32 and the loss is
  computed in float32 (under a mixed-precision policy too).
- A non-finite input (NaN or ±inf anywhere, teacher or student) gives a NaN
  loss, never a finite number, also where the formula would hide it behind
  a sort, a mask or a clamp (e.g. the official PKT code zeroes NaN features).
  `keras.callbacks.TerminateOnNaN` stops training on it.
- Finite inputs of any scale (×1e-20 … ×1e20 in float32) give the loss of
  the float64 reference: inputs whose largest magnitude is beyond 2^±40 are
  divided by a power of two (`base.magnitude`, exact) before any square,
  Gram matrix or norm, their clamps rescaled alike (`base.scaled_eps`).
  Where the loss itself is beyond float32's range it is inf or NaN, never
  a finite number.
- An empty batch (N = 0, e.g. a replica's share of a short last batch under
  `tf.distribute`) gives 0 with a finite (empty) gradient, as Keras's own
  losses do, instead of a mean over nothing.
- A batch of one gives a finite loss and gradient: 0 for RKD-D, RKD-A,
  DarkRank, SP and PKT (no pair to compare); `correlation_congruence`
  compares the two kernels' single entries; `dist_kd`'s intra-class
  correlation of one example is 0, as in the official code, so that term
  is `gamma · T²`. Duplicate, all-equal and all-zero rows also give finite
  gradients (norms take gradient 0 at 0, distances are clamped before the
  square root).
- Teacher and student tensors with different, known batch sizes are refused
  with a `ValueError`; integer tensors with a `TypeError` that says how to
  cast them.

Every loss is written with `keras.ops` and gives the same value and gradient
on TensorFlow, JAX and PyTorch. `rkd_distance`, `rkd_angle` and
`triplet_loss` take the batch's Gram matrix in float64 on every backend
(`base.in_float64`); RKD-A's loop over chunks of vertices has a TensorFlow
version of its own (`angle_sum_tensorflow`: XLA-fused chunks, batches of
unknown size), and the triplet loss draws its negatives per backend.
"""

import keras

from rkd_keras import checks
from rkd_keras.losses.features import HintRegressor, attention_transfer, fitnet
from rkd_keras.losses.logits import dist_kd, dkd, hinton_kd
from rkd_keras.losses.prototypical import prototypical_loss
from rkd_keras.losses.relational import (
    correlation_congruence, dark_rank, pkt, relaxed_contrastive, similarity_preserving,
)
from rkd_keras.losses.rkd import rkd_angle, rkd_distance
from rkd_keras.losses.triplet import TRIPLET_SAMPLINGS, triplet_loss
from rkd_keras.losses.wrappers import (
    DKD,
    PKT,
    AttentionTransfer,
    CorrelationCongruence,
    DarkRank,
    DistKD,
    FitNet,
    HintonKD,
    LossWrapper,
    PrototypicalLoss,
    RKDAngle,
    RelaxedContrastive,
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
    "relaxed_contrastive": RelaxedContrastive,
    "dist_kd": DistKD,
    "hinton_kd": HintonKD,
    "dkd": DKD,
    "attention_transfer": AttentionTransfer,
    "fitnet": FitNet,
    "triplet_loss": TripletLoss,
    "prototypical_loss": PrototypicalLoss,
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
        return LOSSES[checks.check_loss_name(identifier)]()
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
    "relaxed_contrastive",
    "dist_kd",
    "hinton_kd",
    "dkd",
    "attention_transfer",
    "fitnet",
    "triplet_loss",
    "prototypical_loss",
    "RKDDistance",
    "RKDAngle",
    "DarkRank",
    "SimilarityPreserving",
    "PKT",
    "CorrelationCongruence",
    "RelaxedContrastive",
    "DistKD",
    "HintonKD",
    "DKD",
    "AttentionTransfer",
    "FitNet",
    "HintRegressor",
    "TripletLoss",
    "PrototypicalLoss",
    "LossWrapper",
    "TRIPLET_SAMPLINGS",
]
