"""Losses on the relations between a batch's examples: SP, PKT, CC, DarkRank and the relaxed contrastive loss.

Each compares a relation computed inside the teacher's batch with the same
relation inside the student's, so teacher and student may have different
widths, and each needs the whole batch at once. Inputs `(N, ...)` are
flattened to `(N, D)`. Written with `keras.ops` only, so they run on every
Keras backend.
"""

import math

import keras

from rkd_keras.losses.base import (
    as_float32,
    centered_gram,
    check_batch,
    check_number,
    flatten,
    guard,
    in_float64,
    l2_normalize,
    magnitude,
    norm,
    scaled_eps,
    squared_distances,
)


def _feature_pair(teacher, student):
    teacher = keras.ops.stop_gradient(as_float32(teacher, "Teacher features"))
    student = as_float32(student, "Student features")
    check_batch(teacher, student)
    return flatten(teacher), flatten(student)


def _rows(x):
    return keras.ops.cast(keras.ops.shape(x)[0], "float32")


def similarity_preserving(teacher, student):
    """Similarity-preserving KD: the row-normalized batch Gram matrices (Tung & Mori, ICCV 2019).

    Formula:
    ```
    G = normalize_rows(F Fᵀ),   F the (N, D) flattened features
    loss = ‖G_t − G_s‖²_F / N²
    ```
    `normalize_rows` divides each row by `max(‖row‖, 1e-12)` (PyTorch's
    `F.normalize`). Follows `Similarity.similarity_loss` of RepDistiller
    (github.com/HobbitLong/RepDistiller, `distiller_zoo/SP.py`); the official
    module takes a list of feature pairs, here a `Term` per pair. Deliberate
    difference: a scalar of shape `()` where the official returns shape `(1,)`.

    Args:
        teacher: Teacher features `(N, ...)`; no gradient flows into them.
        student: Student features `(N, ...)`; any width.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> float(similarity_preserving(teacher, 3.0 * teacher))  # the same similarities
    0.0
    >>> round(float(similarity_preserving(teacher, np.ones((2, 5), "float32"))), 4)  # 1 − 1/√2
    0.2929
    """
    teacher, student = _feature_pair(teacher, student)
    squared = keras.ops.sum(keras.ops.square(_normalized_similarity(teacher) - _normalized_similarity(student)))
    return guard(squared / (_rows(student) * _rows(student)), teacher, student)


def _normalized_similarity(x, eps=1e-12):
    """`normalize_rows(x xᵀ)`, the Gram matrix of `x / magnitude(x)` (its entries of x ×1e10 overflow float32)."""
    scale = magnitude(x)
    x = x / scale
    return l2_normalize(keras.ops.matmul(x, keras.ops.transpose(x)), axis=1, eps=scaled_eps(eps, scale))



def _pkt_probabilities(x, eps):
    """Row i: the cosine similarities of example i to every example, mapped to [0, 1] and normalized to sum 1."""
    x = x / (norm(x, axis=1, keepdims=True) + eps)
    similarity = (keras.ops.matmul(x, keras.ops.transpose(x)) + 1.0) / 2.0
    return similarity / keras.ops.sum(similarity, axis=1, keepdims=True)


def pkt(teacher, student, *, eps: float = 1e-7):
    """Probabilistic knowledge transfer: KL of cosine-similarity distributions (Passalis & Tefas, ECCV 2018).

    Formula:
    ```
    c_ij = (cos(x_i, x_j) + 1) / 2,   P_ij = c_ij / Σ_k c_ik    (teacher: P, student: Q)
    loss = mean over all N² (i, j) of P_ij · log((P_ij + eps) / (Q_ij + eps))
    ```
    with `cos(x_i, x_j) = ⟨x_i, x_j⟩ / ((‖x_i‖ + eps)(‖x_j‖ + eps))`. Follows
    `PKT.cosine_similarity_loss` of RepDistiller (github.com/HobbitLong/RepDistiller,
    `distiller_zoo/PKT.py`, the authors' code).

    Deliberate differences: the official code replaces NaN features by 0
    after normalizing them (`x[x != x] = 0`), which turns a NaN input into a
    plausible loss; here a non-finite input gives a NaN loss (see the
    package's rules). An all-zero row has a finite gradient here (the
    official `sqrt` gives NaN there).

    Args:
        teacher: Teacher features `(N, ...)`; no gradient flows into them.
        student: Student features `(N, ...)`; any width.
        eps: Added to the norms and to both probabilities inside the log.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")  # P rows (2/3, 1/3)
    >>> round(float(pkt(teacher, 2.0 * teacher)), 6)  # the same cosines
    0.0
    >>> student = np.array([[1.0, 0.0], [1.0, 1.0]], "float32")  # c_01 = (1 + 1/√2) / 2
    >>> round(float(pkt(teacher, student)), 4)
    0.0167
    """
    eps = check_number(eps, "eps")
    teacher, student = _feature_pair(teacher, student)
    teacher_probs = _pkt_probabilities(teacher, eps)
    student_probs = _pkt_probabilities(student, eps)
    gap = teacher_probs - student_probs
    # P·log((P + eps)/(Q + eps)) minus P − Q, whose rows sum to 0 (rows of P and
    # Q sum to 1): the same loss and gradient, but each term is of second order
    # in P − Q, so the float32 rounding of P and Q no longer cancels in the sum
    # (a tiny loss at N = 2 was off by up to 3e-2 relative, now by 2e-5).
    divergence = teacher_probs * keras.ops.log1p(gap / (student_probs + eps)) - gap
    return guard(keras.ops.mean(divergence), teacher, student)


def _gaussian_correlation_terms(x, gamma, order):
    """CC's kernel by its Taylor sum without its constant term: `Σ_{p=1}^{order} (2γ)^p / p! · ⟨x_i, x_j⟩^p`."""
    inner = keras.ops.matmul(x, keras.ops.transpose(x))
    term = inner * (2.0 * gamma)
    total = term
    for p in range(2, order + 1):
        term = term * inner * (2.0 * gamma / p)  # (2γ)^p / p! · inner^p, built up one factor at a time
        total = total + term
    return total


def correlation_congruence(teacher, student, *, gamma: float = 0.4, order: int = 2):
    """Correlation congruence: the batch's Gaussian-kernel correlation matrices (Peng et al., ICCV 2019).

    Formula:
    ```
    C_ij = exp(−2γ) · Σ_{p=0}^{order} (2γ)^p / p! · ⟨x_i, x_j⟩^p     (teacher C_t, student C_s)
    loss = ‖C_s − C_t‖_F / N²
    ```
    Each side's N×N kernel is computed in its own space from raw inner
    products, so the widths may differ. Follows `CCKDLoss` of torchdistill
    (github.com/yoshitomo-matsubara/torchdistill, `torchdistill/losses/mid_level.py`,
    commit 3e4373c, unchanged in substance since 2020) with
    `kernel_config={'type': 'gaussian', 'gamma': gamma, 'max_p': order}` and
    `reduction='batchmean'`: `torch.dist(student_cc, teacher_cc, 2) / N²`,
    the Frobenius norm **not squared** (the paper's eq. squares it).

    The Taylor sum approximates `exp(−γ‖x_i − x_j‖²)` only for unit-norm
    features; like torchdistill this applies no normalization (add a
    `keras.layers.UnitNormalization` to the selected tensors for the paper's
    kernel). Deliberate difference: where `C_s = C_t` the gradient is 0
    (the Frobenius norm's subgradient, as PyTorch takes it), not NaN.
    The kernels' equal constant terms `exp(−2γ)` are left out of their
    difference (features ×1e-5 keep it); where the kernels overflow float32
    (inner products of 1e19, features ×1e10) the loss is NaN or inf.

    Args:
        teacher: Teacher features `(N, ...)`; no gradient flows into them.
        student: Student features `(N, ...)`; any width.
        gamma: The kernel's `γ > 0`.
        order: Highest power `p` of the Taylor sum (torchdistill's `max_p`), ≥ 1.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.eye(2, dtype="float32")
    >>> float(correlation_congruence(teacher, teacher[:, ::-1]))  # the same inner products
    0.0
    >>> student = np.zeros((2, 3), "float32")  # √2 · exp(−0.8) · (0.8 + 0.32) / 4
    >>> round(float(correlation_congruence(teacher, student, gamma=0.4)), 4)
    0.1779
    """
    gamma = check_number(gamma, "gamma")
    order = check_number(order, "order", minimum=1, strict=False, integer=True)
    teacher, student = _feature_pair(teacher, student)
    # The kernels' constant terms exp(−2γ) cancel: left out, features ×1e-5 (whose kernels are exp(−2γ) to
    # float32's precision) keep their difference. The norm squares `difference / magnitude` (features ×1e5).
    difference = math.exp(-2.0 * gamma) * (
        _gaussian_correlation_terms(student, gamma, order) - _gaussian_correlation_terms(teacher, gamma, order)
    )
    return guard(norm(difference, axis=(0, 1)) / (_rows(student) * _rows(student)), teacher, student)


def _squared_distances(x, eps=1e-12):
    """The official `pdist(x, squared=True)`, `max(‖x_i − x_j‖², eps)`, of `x / scale`, and `scale`.

    Rows are centred first: distances do not change, and the float32
    cancellation in `‖a‖² + ‖b‖² − 2⟨a, b⟩` shrinks. They are divided by
    `magnitude(x)` before the squares (exact), so embeddings ×1e18 neither
    overflow nor lose their order; the clamp is `eps` in those units. The
    clamp keeps the gradients of duplicate rows finite. The diagonal (the
    official code zeroes it) is never read: each row's list excludes the
    example itself.
    """
    x = x - keras.ops.mean(x, axis=0, keepdims=True)
    scale = magnitude(x)
    x = x / scale
    squared_norms = keras.ops.sum(keras.ops.square(x), axis=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * keras.ops.matmul(x, keras.ops.transpose(x))
    return keras.ops.maximum(squared, scaled_eps(eps, scale)), scale


def dark_rank(teacher, student, *, alpha: float = 3.0, beta: float = 3.0, list_length: int = 4):
    """DarkRank (Chen et al., AAAI 2018) as the official RKD code's `HardDarkRank`.

    Formula:
    ```
    score(i, j) = −alpha · ‖x_i − x_j‖^beta
    π_i = the list_length examples j ≠ i of highest teacher score (nearest first)
    loss = −mean over i of Σ_{p} [score_s(i, π_i[p]) − log Σ_{q ≥ p} exp(score_s(i, π_i[q]))]
    ```
    the Plackett-Luce log-likelihood of the teacher's ranking of each
    example's nearest neighbours under the student's scores. Follows
    `HardDarkRank` of the official RKD code (github.com/lenscloth/RKD,
    `metric/loss.py`, commit 92c8563; `permute_len` there is `list_length`):
    with `list_length ≥ N` the list holds the N − 1 others, as the official
    slicing does. Relational, so the widths may differ.

    Deliberate differences: a batch of one gives 0 (the official code
    fails on an empty list); the example itself is excluded explicitly
    rather than by sorting first (the same list whenever the official code's
    self-score 0 is the largest, which it is unless `‖x_i − x_j‖^beta`
    underflows).

    Args:
        teacher: Teacher embeddings `(N, ...)`; no gradient flows into them.
        student: Student embeddings `(N, ...)`; any width.
        alpha: Scale `> 0` of the scores.
        beta: Power `> 0` of the distances.
        list_length: Neighbours ranked per example (the official `permute_len`).

    Returns:
        Scalar float32 loss.

    Example:
    >>> embeddings = np.array([[0.0], [1.0], [3.0]], "float32")  # lists: 0→(1, 2), 1→(0, 2), 2→(1, 0)
    >>> # mean of log(1 + e^−2), log(1 + e^−1), log(1 + e^−1): the student ranks as the teacher
    >>> round(float(dark_rank(embeddings, embeddings, alpha=1.0, beta=1.0)), 4)
    0.2512
    """
    alpha = check_number(alpha, "alpha")
    beta = check_number(beta, "beta")
    list_length = check_number(list_length, "list_length", minimum=1, strict=False, integer=True)
    teacher, student = _feature_pair(teacher, student)
    # The teacher's ranking needs only the order of its distances, which scores −alpha·d^beta keep.
    teacher_squared, _ = _squared_distances(teacher)
    student_squared, student_scale = _squared_distances(student)
    student_scores = -alpha * keras.ops.power(student_scale * keras.ops.sqrt(student_squared), beta)

    rows = keras.ops.shape(student)[0]
    index = keras.ops.arange(rows)
    is_self = index[:, None] == index[None, :]
    neighbours = keras.ops.argsort(keras.ops.where(is_self, float("inf"), teacher_squared), axis=1)
    ranked = keras.ops.take_along_axis(student_scores, neighbours[:, :list_length], axis=1)

    # Positions past N − 2 hold the example itself (list_length ≥ N): not in the list.
    position = keras.ops.arange(keras.ops.shape(ranked)[1])
    listed = position < rows - 1
    later = position[None, :] >= position[:, None]
    # Position p competes with the listed positions q ≥ p; itself always, so no sum is empty.
    competes = keras.ops.logical_and(
        later, keras.ops.logical_or(listed[None, :], position[None, :] == position[:, None])
    )
    competitors = keras.ops.where(competes[None], ranked[:, None, :], float("-inf"))
    log_likelihood = keras.ops.where(listed[None, :], ranked - keras.ops.logsumexp(competitors, axis=2), 0.0)
    return guard(-keras.ops.mean(keras.ops.sum(log_likelihood, axis=1)), teacher, student)


def _clamped_distances(x, eps=1e-12):
    """The reference's `pdist`: `sqrt(max(‖x_i − x_j‖², eps))`, 0 on the diagonal (call it inside `in_float64`).

    The squared distances come from the batch's centred Gram matrix in
    float64, so near-duplicate rows and large norms keep their distances
    (the reference's float32 `‖a‖² + ‖b‖² − 2a·b` loses them).
    """
    distances = keras.ops.sqrt(keras.ops.maximum(squared_distances(centered_gram(x)), eps))
    index = keras.ops.arange(keras.ops.shape(x)[0])
    return keras.ops.where(index[:, None] == index[None, :], 0.0, distances)


def relaxed_contrastive(teacher, student, *, sigma: float = 1.0, delta: float = 1.0):
    """The relaxed contrastive loss: the teacher's similarities as soft labels (Kim et al., CVPR 2021).

    Formula:
    ```
    dist(x)_ij = sqrt(max(‖x_i − x_j‖², 1e-12)), 0 on the diagonal
    D = dist(s),  m_i = (1/N) Σ_j D_ij,  D̂ = D / m        (the row mean, its zero diagonal included)
    P = exp(−dist(t̂)² / sigma),  t̂ = t / max(‖t‖, 1e-12)  (no gradient)
    loss = (1/N) · Σ_{i≠j} [P_ij · D̂_ij² + (1 − P_ij) · max(delta − D̂_ij, 0)²]
    ```
    Follows `Relaxed_Contra` of the official code
    (github.com/tjddus9597/LabelRelaxation-CVPR21, `code/Relaxed_losses.py`),
    whose `forward(t_emb, s_emb)` takes the *student* (their target model)
    first and the teacher (their source model) second; defaults σ = 1, δ = 1
    from its `train_target.py` and every command of its README. The teacher
    is always L2-normalised inside the loss, the student never. Relational:
    teacher and student may have different widths.

    Deliberate differences: a batch of one gives 0 with a finite gradient
    (the reference divides 0 by a zero mean); distances come from a float64
    Gram matrix (see `_clamped_distances`).

    Args:
        teacher: Teacher embeddings `(N, ...)`; no gradient flows into them.
        student: Student embeddings `(N, ...)`; any width.
        sigma: Width `> 0` of the teacher's Gaussian similarities.
        delta: Margin `> 0` of the push term, in units of the mean distance.

    Returns:
        Scalar float32 loss.

    Example:
    >>> teacher = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")  # P_01 = exp(−2)
    >>> # D̂_01 = 2 (the row mean is half the distance): (e⁻² · 4 + 0) · 2 / 2
    >>> round(float(relaxed_contrastive(teacher, np.array([[0.0], [3.0]], "float32"))), 4)
    0.5413
    """
    sigma = check_number(sigma, "sigma")
    delta = check_number(delta, "delta")
    teacher, student = _feature_pair(teacher, student)

    def loss(teacher, student):
        relaxed = keras.ops.stop_gradient(
            keras.ops.exp(-keras.ops.square(_clamped_distances(l2_normalize(teacher, axis=1))) / sigma)
        )
        # D̂ is the same for the student ×2^k (the clamp rescaled with it): a power of two keeps float32-range
        # inputs ×1e19 from overflowing the squares, exactly.
        scale = magnitude(student)
        distances = _clamped_distances(student / scale, scaled_eps(1e-12, scale))
        rows = _rows(student)
        normalized = keras.ops.divide_no_nan(distances, keras.ops.sum(distances, axis=1, keepdims=True) / rows)
        pull = relaxed * keras.ops.square(normalized)
        push = (1.0 - relaxed) * keras.ops.square(keras.ops.relu(delta - normalized))
        index = keras.ops.arange(keras.ops.shape(student)[0])
        pairs = keras.ops.where(index[:, None] == index[None, :], 0.0, pull + push)
        return keras.ops.sum(pairs) / keras.ops.maximum(rows, 1.0)

    return guard(in_float64(loss, teacher, student), teacher, student)
