"""`keras.losses.Loss` wrappers of the loss functions, in one place.

Each wrapper follows the pattern of Keras's `LossFunctionWrapper` (see
`keras.losses.Huber`; that base class is not public API, so `LossWrapper`
is its few lines here): it passes its function and keyword arguments to
`super().__init__` and needs no `call` or `get_config` of its own. For the
distillation losses `y_true` holds the teacher's tensor and `y_pred` the
student's. `relational` says whether a loss compares relations across the
batch (it needs the whole batch at once) or each example on its own.

`RKDDistance` and `RKDAngle` take `l2_normalize=True` to compare the
relations of L2-normalised rows, as the official classification code does
(lenscloth/RKD, branch `classification`, `run_distill_classification.py`:
`F.normalize(e_s)`, `F.normalize(e_t)` before the distance and angle losses).
The wrapper normalises, not the model: the classifier's logits are computed
from the features before normalisation, so a normalisation layer would have
to be a second output of the model, and a loss option keeps the model as it
is and any layer selectable.
"""

import keras

from rkd_keras import checks
from rkd_keras.losses.base import as_float32, check_number, flatten, l2_normalize
from rkd_keras.losses.features import attention_transfer, fitnet
from rkd_keras.losses.logits import dist_kd, dkd, hinton_kd
from rkd_keras.losses.prototypical import prototypical_loss
from rkd_keras.losses.relational import (
    correlation_congruence, dark_rank, pkt, relaxed_contrastive, similarity_preserving,
)
from rkd_keras.losses.rkd import check_rkd_arguments, rkd_angle, rkd_distance
from rkd_keras.losses.triplet import check_triplet_arguments, triplet_loss
from rkd_keras.saving import register


class LossWrapper(keras.losses.Loss):
    """A loss function with fixed keyword arguments, serialized by those arguments.

    Class attributes that `Term` and the `Distiller` read:
        relational: the loss compares relations across the batch, so under
            `tf.distribute` it needs the global batch. `True` is the safe
            default for a function of unknown kind.
        uses_regressor: the student's tensor passes through a learned
            `HintRegressor` (FitNet) before the loss.
        uses_labels: the loss reads the batch's class labels (DKD): its
            function takes `(teacher, student, labels)`, and `call` takes
            them as its third argument, which a `Term` passes.

    Args:
        fn: The loss function, `fn(y_true, y_pred, **kwargs)`.
        l2_normalize: Divide each example's (flattened) row of both tensors by
            its L2 norm (`max(‖row‖, 1e-12)`, PyTorch's `F.normalize`) before
            the loss; in float32. The wrappers that offer it say so.
        **kwargs: The function's keyword arguments, stored in the config.
    """

    relational = True
    uses_regressor = False
    uses_labels = False

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, *, l2_normalize=False, **kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(l2_normalize, bool):
            raise ValueError(f"l2_normalize must be True or False, received {l2_normalize!r}.")
        self.fn = fn
        self.l2_normalize = l2_normalize
        self.fn_kwargs = kwargs

    def call(self, y_true, y_pred, labels=None):
        if self.l2_normalize:
            y_true, y_pred = (
                l2_normalize(flatten(as_float32(x, name)), axis=1) for x, name in ((y_true, "Teacher"), (y_pred, "Student"))
            )
        if not self.uses_labels:
            return self.fn(y_true, y_pred, **self.fn_kwargs)
        if labels is None:
            raise ValueError(
                f"The loss {self.name!r} reads the class labels: call it as loss.call(teacher, student, labels), "
                f"or use it in a Term (Term({self.name!r})), which passes each batch's labels."
            )
        return self.fn(y_true, y_pred, labels, **self.fn_kwargs)

    def get_config(self):
        # Written only when on, so the configs of wrappers without the option stay theirs.
        switch = {"l2_normalize": True} if self.l2_normalize else {}
        return {**super().get_config(), **self.fn_kwargs, **switch}


@register
class RKDDistance(LossWrapper):
    """Distance-wise RKD loss; see `rkd_distance`.

    `l2_normalize=True` compares the distances of L2-normalised rows, as the
    official classification code (see the module's docstring).

    Example:
    >>> teacher = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    >>> float(RKDDistance()(teacher, 2.0 * teacher)) < 1e-6
    True
    >>> float(RKDDistance(l2_normalize=True)(teacher, 2.0 * teacher[:, ::-1])) < 1e-6  # same after normalising
    True
    """

    def __init__(
        self, delta=1.0, eps=1e-12, l2_normalize=False, reduction="sum_over_batch_size", name="rkd_distance", dtype=None
    ):
        check_rkd_arguments(delta, eps)
        super().__init__(
            rkd_distance, reduction=reduction, name=name, dtype=dtype, l2_normalize=l2_normalize, delta=delta, eps=eps
        )


@register
class RKDAngle(LossWrapper):
    """Angle-wise RKD loss; see `rkd_angle`.

    `l2_normalize=True` compares the angles of L2-normalised rows, as the
    official classification code (see the module's docstring).

    Example:
    >>> teacher = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    >>> float(RKDAngle()(teacher, 3.0 * teacher + 1.0)) < 1e-6
    True
    """

    def __init__(
        self,
        delta=1.0,
        eps=1e-12,
        chunk_size=None,
        l2_normalize=False,
        reduction="sum_over_batch_size",
        name="rkd_angle",
        dtype=None,
    ):
        check_rkd_arguments(delta, eps)
        super().__init__(
            rkd_angle, reduction=reduction, name=name, dtype=dtype, l2_normalize=l2_normalize,
            delta=delta, eps=eps, chunk_size=chunk_size,
        )


@register
class FitNet(LossWrapper):
    """FitNet hints; see `fitnet`. In a `Term`, the Distiller adds and trains the `HintRegressor`.

    `regressor=False` compares the student's tensor with the teacher's as it
    is (it must have the teacher's shape): the absolute term, a plain mean
    squared error, that puts a student of the teacher's embedding width into
    the teacher's space, so that it can query a gallery the teacher indexed.

    Example:
    >>> teacher = np.ones((2, 8), "float32")
    >>> float(FitNet()(teacher, np.zeros((2, 8), "float32")))
    1.0
    >>> FitNet(regressor=False).uses_regressor
    False
    """

    relational = False
    uses_regressor = True  # the default; `regressor=False` turns it off for the instance

    def __init__(self, regressor=True, reduction="sum_over_batch_size", name="fitnet", dtype=None):
        super().__init__(fitnet, reduction=reduction, name=name, dtype=dtype)
        self.uses_regressor = checks.check_bool("regressor", regressor)

    def get_config(self):
        # Written only when off, so the configs of FitNet with its regressor stay as they were.
        config = super().get_config()
        return config if self.uses_regressor else {**config, "regressor": False}


@register
class HintonKD(LossWrapper):
    """Hinton's KD on logits; see `hinton_kd`.

    Example:
    >>> logits = np.array([[3.0, 1.0, 0.0]], "float32")
    >>> float(HintonKD(temperature=2.0)(logits, logits))
    0.0
    """

    relational = False

    def __init__(self, temperature=4.0, standardize=False, reduction="sum_over_batch_size", name="hinton_kd", dtype=None):
        check_number(temperature, "temperature")
        # Stored only when on, so the configs of the plain KD stay as they were.
        switch = {"standardize": True} if checks.check_bool("standardize", standardize) else {}
        super().__init__(hinton_kd, reduction=reduction, name=name, dtype=dtype, temperature=temperature, **switch)


@register
class DKD(LossWrapper):
    """Decoupled KD on logits; see `dkd`. It reads the labels: a `Term` passes each batch's `y`.

    Example:
    >>> logits = np.array([[3.0, 1.0, 0.0]], "float32")
    >>> float(DKD().call(logits, logits, np.array([0])))
    0.0
    """

    relational = False
    uses_labels = True

    def __init__(
        self, alpha=1.0, beta=8.0, temperature=4.0, standardize=False, reduction="sum_over_batch_size", name="dkd",
        dtype=None,
    ):
        check_number(alpha, "alpha", strict=False)
        check_number(beta, "beta", strict=False)
        check_number(temperature, "temperature")
        switch = {"standardize": True} if checks.check_bool("standardize", standardize) else {}
        super().__init__(
            dkd, reduction=reduction, name=name, dtype=dtype, alpha=alpha, beta=beta, temperature=temperature, **switch
        )


@register
class DistKD(LossWrapper):
    """DIST on logits; see `dist_kd`. Relational: its intra-class part correlates across the batch.

    Example:
    >>> logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]], "float32")
    >>> round(float(DistKD(beta=2.0)(logits, logits)), 6)
    0.0
    """

    def __init__(
        self, beta=1.0, gamma=1.0, temperature=1.0, reduction="sum_over_batch_size", name="dist_kd", dtype=None
    ):
        check_number(beta, "beta", strict=False)
        check_number(gamma, "gamma", strict=False)
        check_number(temperature, "temperature")
        super().__init__(
            dist_kd, reduction=reduction, name=name, dtype=dtype, beta=beta, gamma=gamma, temperature=temperature
        )


@register
class AttentionTransfer(LossWrapper):
    """Attention transfer on feature maps; see `attention_transfer`.

    Example:
    >>> maps = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    >>> float(AttentionTransfer()(maps, 2.0 * maps))
    0.0
    """

    relational = False

    def __init__(self, reduction="sum_over_batch_size", name="attention_transfer", dtype=None):
        super().__init__(attention_transfer, reduction=reduction, name=name, dtype=dtype)


@register
class SimilarityPreserving(LossWrapper):
    """Similarity-preserving KD; see `similarity_preserving`.

    Example:
    >>> features = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> float(SimilarityPreserving()(features, 2.0 * features)) < 1e-12
    True
    """

    def __init__(self, reduction="sum_over_batch_size", name="similarity_preserving", dtype=None):
        super().__init__(similarity_preserving, reduction=reduction, name=name, dtype=dtype)


@register
class PKT(LossWrapper):
    """Probabilistic knowledge transfer; see `pkt`.

    Example:
    >>> features = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> float(PKT()(features, 2.0 * features)) < 1e-6
    True
    """

    def __init__(self, eps=1e-7, reduction="sum_over_batch_size", name="pkt", dtype=None):
        check_number(eps, "eps")
        super().__init__(pkt, reduction=reduction, name=name, dtype=dtype, eps=eps)


@register
class CorrelationCongruence(LossWrapper):
    """Correlation congruence; see `correlation_congruence`.

    Example:
    >>> features = np.eye(3, dtype="float32")
    >>> float(CorrelationCongruence(gamma=0.5)(features, features[:, ::-1]))
    0.0
    """

    def __init__(
        self, gamma=0.4, order=2, reduction="sum_over_batch_size", name="correlation_congruence", dtype=None
    ):
        check_number(gamma, "gamma")
        check_number(order, "order", minimum=1, strict=False, integer=True)
        super().__init__(correlation_congruence, reduction=reduction, name=name, dtype=dtype, gamma=gamma, order=order)


@register
class RelaxedContrastive(LossWrapper):
    """The relaxed contrastive loss; see `relaxed_contrastive`.

    Example:
    >>> teacher = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    >>> float(RelaxedContrastive(sigma=0.5)(teacher, teacher)) > 0  # a copy still pulls and pushes
    True
    """

    def __init__(self, sigma=1.0, delta=1.0, reduction="sum_over_batch_size", name="relaxed_contrastive", dtype=None):
        check_number(sigma, "sigma")
        check_number(delta, "delta")
        super().__init__(relaxed_contrastive, reduction=reduction, name=name, dtype=dtype, sigma=sigma, delta=delta)


@register
class DarkRank(LossWrapper):
    """DarkRank (the official RKD code's `HardDarkRank`); see `dark_rank`.

    Example:
    >>> embeddings = np.array([[0.0], [1.0], [3.0]], "float32")
    >>> round(float(DarkRank(alpha=1.0, beta=1.0)(embeddings, embeddings)), 4)
    0.2512
    """

    def __init__(
        self, alpha=3.0, beta=3.0, list_length=4, reduction="sum_over_batch_size", name="dark_rank", dtype=None
    ):
        check_number(alpha, "alpha")
        check_number(beta, "beta")
        check_number(list_length, "list_length", minimum=1, strict=False, integer=True)
        super().__init__(
            dark_rank, reduction=reduction, name=name, dtype=dtype, alpha=alpha, beta=beta, list_length=list_length
        )


@register
class TripletLoss(LossWrapper):
    """Triplet loss on `(labels, embeddings)`; see `triplet_loss`.

    Usable as a model's loss (`y_true` = labels) and as the student's task
    loss in `Distiller.compile(loss=TripletLoss())`.

    Example:
    ```python
    teacher.compile(optimizer="adam", loss=TripletLoss(margin=0.2))
    ```
    """

    def __init__(
        self,
        margin=0.2,
        sampling="distance_weighted",
        cutoff=0.5,
        nonzero_loss_cutoff=1.4,
        seed=None,
        reduction="sum_over_batch_size",
        name="triplet_loss",
        dtype=None,
    ):
        check_triplet_arguments(margin, sampling, cutoff, nonzero_loss_cutoff)
        super().__init__(
            triplet_loss, reduction=reduction, name=name, dtype=dtype, margin=margin, sampling=sampling,
            cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff, seed=seed,
        )


@register
class PrototypicalLoss(LossWrapper):
    """Prototypical-network loss on `(labels, embeddings)` of a P×K batch; see `prototypical_loss`.

    Usable as a model's loss (`y_true` = labels) and as the student's task
    loss in `Distiller.compile(loss=PrototypicalLoss(shots=5))`.

    Example:
    ```python
    teacher.compile(optimizer="adam", loss=PrototypicalLoss(shots=5))
    teacher.fit(pk_batches(train, classes_per_batch=20, samples_per_class=5 + 15), epochs=10)
    ```
    """

    def __init__(self, shots=1, reduction="sum_over_batch_size", name="prototypical_loss", dtype=None):
        check_number(shots, "shots", strict=False, minimum=1, integer=True)
        super().__init__(prototypical_loss, reduction=reduction, name=name, dtype=dtype, shots=shots)
