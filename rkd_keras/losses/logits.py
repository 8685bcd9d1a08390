"""Losses on class logits: Hinton's KD (Hinton et al. 2015), with the logit standardization of Sun et al.
(CVPR 2024), DKD (Zhao et al., CVPR 2022) and DIST (Huang et al., NeurIPS 2022).

Written with `keras.ops` only, so they run on every Keras backend.
"""

import keras

from rkd_keras import checks
from rkd_keras.losses.base import as_float32, check_batch, check_number, guard, norm


def _logit_pair(teacher_logits, student_logits):
    teacher = keras.ops.stop_gradient(as_float32(teacher_logits, "Teacher logits", min_rank=2))
    student = as_float32(student_logits, "Student logits", min_rank=2)
    check_batch(teacher, student)
    if len(teacher.shape) != 2 or tuple(teacher.shape[1:]) != tuple(student.shape[1:]):
        raise ValueError(
            "Teacher and student logits must both have shape (batch, classes) with the same classes, "
            f"received teacher {tuple(teacher.shape)} and student {tuple(student.shape)}."
        )
    return teacher, student


def _standardized(logits):
    """Each row's z-score, `(x − mean) / (1e-7 + std)` with Bessel's correction, as the authors' `normalize`.

    sunshangquan/logit-standardization-KD `mdistiller/distillers/KD.py`:
    `torch.std` divides by C − 1 (`keras.ops.std` by C, 5 % off at C = 10),
    and 1e-7 is added to the std, not inside the root. The norm has gradient
    0 at a constant row (the reference's `std` gives NaN there); a single
    class divides by 1 (the reference's `std` of one value is NaN).
    """
    centered = logits - keras.ops.mean(logits, axis=1, keepdims=True)
    classes = keras.ops.cast(keras.ops.shape(logits)[1], "float32")
    std = norm(centered, axis=1, keepdims=True) / keras.ops.sqrt(keras.ops.maximum(classes - 1.0, 1.0))
    return centered / (1e-7 + std)


def hinton_kd(teacher_logits, student_logits, *, temperature: float = 4.0, standardize: bool = False):
    """Hinton's knowledge distillation: the KL divergence of the softened class distributions.

    Formula:
    ```
    p_t = softmax(t / T),  log p_s = log_softmax(s / T)
    loss = T² · (1/N) · Σ_n Σ_c p_t[n, c] · (log p_t[n, c] − log p_s[n, c])
    ```
    Follows `DistillKL` of RepDistiller (github.com/HobbitLong/RepDistiller,
    `distiller_zoo/KD.py`): `F.kl_div(log_softmax(s/T), softmax(t/T),
    size_average=False) · T² / N`. Both sides come from `log_softmax`, so a
    confident teacher's tiny probabilities keep their exact logarithms
    (`keras.losses.kl_divergence` clips them at 1e-7, several percent off).
    Per-example: each example compares its own two distributions.

    `standardize=True` is the logit-standardization KD (Sun et al., CVPR
    2024; sunshangquan/logit-standardization-KD, `mdistiller/distillers/KD.py`,
    `kd_loss(logit_stand=True)`): each row of `t` and of `s` is first
    replaced by its z-score over the classes, `(x − mean) / (1e-7 + std)`,
    the std with Bessel's correction (divided by C − 1).

    Args:
        teacher_logits: Teacher logits `(N, classes)`; no gradient flows into them.
        student_logits: Student logits `(N, classes)`.
        temperature: Softening temperature `T > 0`.
        standardize: Z-score each example's logits of both models first.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.array([[4.0, 0.0, -4.0]], "float32")
    >>> round(float(hinton_kd(teacher, teacher)), 6)  # the same logits: no loss
    0.0
    >>> uniform = np.zeros((1, 3), "float32")  # KL(p_t ‖ uniform) = log 3 − entropy(p_t)
    >>> round(float(hinton_kd(teacher, uniform, temperature=1.0)), 4)
    1.0056
    """
    temperature = check_number(temperature, "temperature")
    teacher, student = _logit_pair(teacher_logits, student_logits)
    if checks.check_bool("standardize", standardize):
        teacher, student = _standardized(teacher), _standardized(student)
    teacher_log_probs = keras.ops.log_softmax(teacher / temperature, axis=-1)
    student_log_probs = keras.ops.log_softmax(student / temperature, axis=-1)
    kl = keras.ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    rows = keras.ops.cast(keras.ops.shape(student)[0], "float32")
    return guard(temperature**2 * keras.ops.sum(kl) / rows, teacher, student)


def _class_labels(labels, logits):
    """Class indices `(N,)` as int32 from labels `(N,)` or `(N, 1)`, checked against the logits' batch."""
    labels = keras.ops.convert_to_tensor(labels)
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = keras.ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(
            f"labels must be class indices of shape (batch,) or (batch, 1), received shape {tuple(labels.shape)}. "
            "For one-hot labels pass keras.ops.argmax(labels, axis=-1)."
        )
    if labels.shape[0] is not None and logits.shape[0] is not None and labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels hold {labels.shape[0]} rows for {logits.shape[0]} rows of logits; give one label per example.")
    return keras.ops.cast(labels, "int32")


def _kl_sum(teacher_log_probs, student_log_probs):
    """`Σ p_t · (log p_t − log p_s)` over every entry (PyTorch's `kl_div(..., size_average=False)`)."""
    return keras.ops.sum(keras.ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs))


def _target_and_others(logits, gold):
    """`log [p(target), Σ_{c ≠ target} p(c)]` per row, `(N, 2)`: the binary split of TCKD, from log-sums."""
    everything = keras.ops.logsumexp(logits, axis=1)
    target = keras.ops.sum(keras.ops.where(gold, logits, 0.0), axis=1)
    others = keras.ops.logsumexp(keras.ops.where(gold, float("-inf"), logits), axis=1)
    return keras.ops.stack([target - everything, others - everything], axis=1)


def dkd(
    teacher_logits,
    student_logits,
    labels,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
):
    """Decoupled knowledge distillation: target-class and non-target-class KD (Zhao et al., CVPR 2022).

    Formula (y the label, g its one-hot mask):
    ```
    b_t = [p_t(y), Σ_{c≠y} p_t(c)],  p = softmax(x / T)          (teacher b_t, student b_s)
    TCKD = T²/N · Σ_n KL(b_t ‖ b_s)
    q = softmax(x / T − 1000 · g)                                 (teacher q_t, student q_s)
    NCKD = T²/N · Σ_n KL(q_t ‖ q_s)
    loss = alpha · TCKD + beta · NCKD
    ```
    Follows `dkd_loss` of mdistiller (github.com/megvii-research/mdistiller,
    `mdistiller/distillers/DKD.py`; defaults α = 1, β = 8, T = 4 from its
    `cfg.py`): the binary split sums the other classes' probabilities (not
    1 − p(y)), and NCKD masks the target with the reference's `− 1000`.
    Deliberate difference: every probability is formed as a log-sum
    (`log Σ_{c≠y} p(c)` by a `logsumexp` over the other classes) where the
    reference takes `log` of a sum of probabilities, which underflows to
    `log 0` when the student is sure of one class. The warm-up of the
    reference's training, `min(epoch / 20, 1)`, is a schedule of the term's
    weight, not part of the loss (`rkd_keras.TermWarmup`).

    `standardize=True` z-scores each example's logits first, as
    `hinton_kd(..., standardize=True)`: the DKD of Sun et al. (CVPR 2024;
    sunshangquan/logit-standardization-KD, `mdistiller/distillers/DKD.py`,
    `dkd_loss(logit_stand=True)`).

    Per-example, and it reads the labels: in a `Term`, the Distiller passes
    each batch's `y`.

    Args:
        teacher_logits: Teacher logits `(N, classes)`; no gradient flows into them.
        student_logits: Student logits `(N, classes)`, at least 2 classes.
        labels: Class indices `(N,)` or `(N, 1)` in `[0, classes)`.
        alpha: Weight of TCKD.
        beta: Weight of NCKD.
        temperature: Softening temperature `T > 0`.
        standardize: Z-score each example's logits of both models first.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.array([[4.0, 1.0, 0.0]], "float32")
    >>> round(float(dkd(teacher, teacher, [0])), 6)  # the same logits: no loss
    0.0
    >>> student = np.array([[4.0, 0.0, 1.0]], "float32")  # the same target probability, the others swapped
    >>> round(float(dkd(teacher, student, [0], alpha=0.0, beta=1.0, temperature=1.0)), 4)  # NCKD: (e − 1) / (e + 1)
    0.4621
    """
    alpha = check_number(alpha, "alpha", strict=False)
    beta = check_number(beta, "beta", strict=False)
    temperature = check_number(temperature, "temperature")
    teacher, student = _logit_pair(teacher_logits, student_logits)
    if student.shape[1] is not None and student.shape[1] < 2:
        raise ValueError(f"dkd splits the target class from the others, so it needs ≥ 2 classes, received {student.shape[1]}.")
    gold = keras.ops.one_hot(_class_labels(labels, student), keras.ops.shape(student)[1]) > 0.5
    if checks.check_bool("standardize", standardize):
        teacher, student = _standardized(teacher), _standardized(student)
    teacher, student = teacher / temperature, student / temperature
    tckd = _kl_sum(_target_and_others(teacher, gold), _target_and_others(student, gold))
    masked = 1000.0 * keras.ops.cast(gold, "float32")
    nckd = _kl_sum(keras.ops.log_softmax(teacher - masked, axis=1), keras.ops.log_softmax(student - masked, axis=1))
    rows = keras.ops.cast(keras.ops.shape(student)[0], "float32")
    return guard(temperature**2 * (alpha * tckd + beta * nckd) / rows, teacher, student)


def _pearson(a, b):
    """Pearson correlation of the rows of `a` and `b` with the official code's eps: `(N,)`."""
    a = a - keras.ops.mean(a, axis=1, keepdims=True)
    b = b - keras.ops.mean(b, axis=1, keepdims=True)
    return keras.ops.sum(a * b, axis=1) / (norm(a, axis=1) * norm(b, axis=1) + 1e-8)


def dist_kd(teacher_logits, student_logits, *, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0):
    """DIST: the inter- and intra-class Pearson relations of the softened predictions (Huang et al. 2022).

    Formula:
    ```
    y_t = softmax(t / T),  y_s = softmax(s / T)                       (N, C)
    ρ(a, b) = ⟨a − ā, b − b̄⟩ / (‖a − ā‖·‖b − b̄‖ + 1e-8)
    inter = 1 − mean over examples n of ρ(y_s[n, :], y_t[n, :])
    intra = 1 − mean over classes c of ρ(y_s[:, c], y_t[:, c])
    loss = T² · (beta · inter + gamma · intra)
    ```
    Follows `DIST` of the official code (github.com/hunto/image_classification_sota,
    `lib/models/losses/dist_kd.py`, commit d9662f7, the one hunto/DIST_KD points
    to). Relational: the intra-class term correlates each class's
    probabilities across the batch.

    Deliberate difference: where a row or class column is constant (a batch
    of one, all rows equal) ρ is 0 as in the official code, and its gradient
    is finite here (a norm's gradient at 0 is taken as 0, as PyTorch does).

    Args:
        teacher_logits: Teacher logits `(N, classes)`; no gradient flows into them.
        student_logits: Student logits `(N, classes)`.
        beta: Weight of the inter-class (per-example) relation.
        gamma: Weight of the intra-class (across the batch) relation.
        temperature: Softening temperature `T > 0`.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> round(float(dist_kd(teacher, teacher)), 6)  # the same logits: correlations of 1
    0.0
    >>> round(float(dist_kd(teacher, teacher[:, ::-1])), 4)  # swapped classes: correlations of −1
    4.0
    """
    temperature = check_number(temperature, "temperature")
    beta = check_number(beta, "beta", strict=False)
    gamma = check_number(gamma, "gamma", strict=False)
    teacher, student = _logit_pair(teacher_logits, student_logits)
    teacher_probs = keras.ops.softmax(teacher / temperature, axis=-1)
    student_probs = keras.ops.softmax(student / temperature, axis=-1)
    inter = 1.0 - keras.ops.mean(_pearson(student_probs, teacher_probs))
    intra = 1.0 - keras.ops.mean(_pearson(keras.ops.transpose(student_probs), keras.ops.transpose(teacher_probs)))
    return guard(temperature**2 * (beta * inter + gamma * intra), teacher, student)
