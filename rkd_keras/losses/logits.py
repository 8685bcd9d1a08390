"""Losses on class logits: Hinton's KD (Hinton et al. 2015) and DIST (Huang et al., NeurIPS 2022).

Written with `keras.ops` only, so they run on every Keras backend.
"""

import keras

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


def hinton_kd(teacher_logits, student_logits, *, temperature: float = 4.0):
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

    Args:
        teacher_logits: Teacher logits `(N, classes)`; no gradient flows into them.
        student_logits: Student logits `(N, classes)`.
        temperature: Softening temperature `T > 0`.

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
    teacher_log_probs = keras.ops.log_softmax(teacher / temperature, axis=-1)
    student_log_probs = keras.ops.log_softmax(student / temperature, axis=-1)
    kl = keras.ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    rows = keras.ops.cast(keras.ops.shape(student)[0], "float32")
    return guard(temperature**2 * keras.ops.sum(kl) / rows, teacher, student)


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
