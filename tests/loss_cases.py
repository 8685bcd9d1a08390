"""The distillation losses with the inputs each takes and its float64 port: shared by the loss tests."""

import keras
import numpy as np

import reference
from rkd_keras import losses


def logits(rng, n):
    """Teacher and student logits over the same 10 classes, spread enough to be confident."""
    return 3.0 * rng.normal(size=(n, 10)), 3.0 * rng.normal(size=(n, 10))


def features(rng, n):
    """Feature vectors of different widths (24 and 10)."""
    return rng.normal(size=(n, 24)), rng.normal(size=(n, 10))


def maps(rng, n):
    """Channels-last maps of the same spatial size and different channels (6 and 3)."""
    return rng.normal(size=(n, 4, 4, 6)), rng.normal(size=(n, 4, 4, 3))


def hints(rng, n):
    """A teacher map and a regressed student map of the same shape (FitNet after its HintRegressor)."""
    return rng.normal(size=(n, 4, 4, 6)), rng.normal(size=(n, 4, 4, 6))


def _fitnet_port(teacher, student):
    # The regressor is applied before `fitnet`: an identity 1×1 convolution in the port.
    return reference.fitnet(teacher, student, np.eye(teacher.shape[-1]))


# name: (function, float64 port of the reference code, inputs)
NEW = {
    "hinton_kd": (losses.hinton_kd, reference.hinton_kd, logits),
    "dist_kd": (losses.dist_kd, reference.dist_kd, logits),
    "similarity_preserving": (losses.similarity_preserving, reference.similarity_preserving, features),
    "pkt": (losses.pkt, reference.pkt, features),
    "correlation_congruence": (losses.correlation_congruence, reference.correlation_congruence, features),
    "dark_rank": (losses.dark_rank, reference.dark_rank, features),
    "relaxed_contrastive": (losses.relaxed_contrastive, reference.relaxed_contrastive, features),
    "attention_transfer": (losses.attention_transfer, reference.attention_transfer, maps),
}

def labels_of(rows):
    """The labels the label-reading cases give a batch: row i is of class i mod 10 (every class once in 10 rows)."""
    return keras.ops.arange(rows) % 10


def _dkd(teacher, student, **params):
    return losses.dkd(teacher, student, labels_of(keras.ops.shape(teacher)[0]), **params)


def _dkd_port(teacher, student, **params):
    return reference.dkd(teacher, student, np.arange(len(teacher)) % 10, **params)


def _standardized(fn):
    def standardized(teacher, student, **params):
        return fn(teacher, student, standardize=True, **params)

    return standardized


# The logit losses that read labels or standardize, as `fn(teacher, student)` with the labels of `labels_of`.
VARIANTS = {
    "dkd": (_dkd, _dkd_port, logits),
    "dkd_standardized": (_standardized(_dkd), _standardized(_dkd_port), logits),
    "hinton_kd_standardized": (_standardized(losses.hinton_kd), reference.hinton_kd_standardized, logits),
}

# Every distillation loss `fn(teacher, student)`: the new ones, FitNet and RKD.
DISTILLATION = {
    **NEW,
    "fitnet": (losses.fitnet, _fitnet_port, hints),
    "rkd_distance": (losses.rkd_distance, reference.rkd_distance, features),
    "rkd_angle": (losses.rkd_angle, reference.rkd_angle, features),
}


def as_float32(*arrays):
    return tuple(np.asarray(a, np.float32) for a in arrays)
