"""Float64 NumPy ports of the reference code of every distillation loss.

RKD (lenscloth/RKD, metric/loss.py) in the direct N×N×D form the official code
uses, independently of the library's Gram-matrix implementation; the other
losses line by line from the files named in their docstrings. Nothing here
imports rkd_keras.
"""

import math

import numpy as np


def huber(x, delta=1.0):
    x = np.abs(x)
    return np.where(x <= delta, 0.5 * x**2, delta * x - 0.5 * delta**2)


def _flat64(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def normalized_distances(x, eps=1e-12):
    x = _flat64(x)
    difference = x[:, None, :] - x[None, :, :]
    d = np.sqrt(np.maximum((difference**2).sum(-1), eps))
    np.fill_diagonal(d, 0.0)
    return d / d[d > 0].mean()


def angles(x, no_direction_below=0.0):
    """`no_direction_below`: the library's deliberate difference (differences shorter than sqrt(eps) = 1e-6 have
    direction 0; the official `F.normalize` only divides by max(norm, 1e-12))."""
    x = _flat64(x)
    difference = x[None, :, :] - x[:, None, :]  # [j, i] = x_i - x_j
    norm = np.linalg.norm(difference, axis=2, keepdims=True)
    unit = difference / np.maximum(norm, 1e-12)  # torch F.normalize
    unit = np.where(norm <= no_direction_below, 0.0, unit)
    return np.einsum("jid,jkd->jik", unit, unit)


def rkd_distance(teacher, student, delta=1.0):
    return huber(normalized_distances(student) - normalized_distances(teacher), delta).mean()


def rkd_angle(teacher, student, delta=1.0, no_direction_below=0.0):
    return huber(angles(student, no_direction_below) - angles(teacher, no_direction_below), delta).mean()


# --- The other distillation losses, each ported line by line from the file named in its docstring. ---
# Inputs come channels last / (N, ...) as the library takes them; the ports run in float64.


def _softmax(x, axis=1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _logsumexp(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _normalize(x, eps=1e-12):
    """torch.nn.functional.normalize(x) (p=2, dim=1)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def pdist(e, squared=False, eps=1e-12):
    """lenscloth/RKD metric/utils.py `pdist`."""
    e_square = (e**2).sum(axis=1)
    prod = e @ e.T
    res = np.clip(e_square[:, None] + e_square[None, :] - 2 * prod, eps, None)
    if not squared:
        res = np.sqrt(res)
    res = res.copy()
    res[range(len(e)), range(len(e))] = 0
    return res


def hinton_kd(teacher_logits, student_logits, temperature=4.0):
    """HobbitLong/RepDistiller distiller_zoo/KD.py `DistillKL.forward(y_s, y_t)`."""
    y_s, y_t = np.asarray(student_logits, np.float64), np.asarray(teacher_logits, np.float64)
    p_s = _log_softmax(y_s / temperature, axis=1)
    p_t = _softmax(y_t / temperature, axis=1)
    # F.kl_div(p_s, p_t, size_average=False): sum of p_t·(log p_t − p_s), 0 where p_t = 0.
    pointwise = np.where(p_t > 0, p_t * (np.log(np.where(p_t > 0, p_t, 1.0)) - p_s), 0.0)
    return pointwise.sum() * (temperature**2) / y_s.shape[0]


def _cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def _pearson_correlation(a, b, eps=1e-8):
    return _cosine_similarity(a - a.mean(1)[:, None], b - b.mean(1)[:, None], eps)


def _inter_class_relation(y_s, y_t):
    return 1 - _pearson_correlation(y_s, y_t).mean()


def _intra_class_relation(y_s, y_t):
    return _inter_class_relation(y_s.T, y_t.T)


def dist_kd(teacher_logits, student_logits, beta=1.0, gamma=1.0, temperature=1.0):
    """hunto/image_classification_sota lib/models/losses/dist_kd.py (d9662f7) `DIST.forward(z_s, z_t)`."""
    z_s, z_t = np.asarray(student_logits, np.float64), np.asarray(teacher_logits, np.float64)
    tau = temperature
    y_s = _softmax(z_s / tau, axis=1)
    y_t = _softmax(z_t / tau, axis=1)
    inter_loss = tau**2 * _inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * _intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


def similarity_preserving(teacher, student):
    """HobbitLong/RepDistiller distiller_zoo/SP.py `Similarity.similarity_loss(f_s, f_t)`."""
    f_s, f_t = _flat64(student), _flat64(teacher)
    bsz = f_s.shape[0]
    G_s = _normalize(f_s @ f_s.T)
    G_t = _normalize(f_t @ f_t.T)
    G_diff = G_t - G_s
    return (G_diff * G_diff).reshape(-1, 1).sum(0)[0] / (bsz * bsz)


def pkt(teacher, student, eps=1e-7):
    """HobbitLong/RepDistiller distiller_zoo/PKT.py `PKT.cosine_similarity_loss(output_net, target_net)`."""
    output_net, target_net = _flat64(student), _flat64(teacher)
    output_net_norm = np.sqrt(np.sum(output_net**2, axis=1, keepdims=True))
    output_net = output_net / (output_net_norm + eps)
    output_net[output_net != output_net] = 0
    target_net_norm = np.sqrt(np.sum(target_net**2, axis=1, keepdims=True))
    target_net = target_net / (target_net_norm + eps)
    target_net[target_net != target_net] = 0
    model_similarity = output_net @ output_net.T
    target_similarity = target_net @ target_net.T
    model_similarity = (model_similarity + 1.0) / 2.0
    target_similarity = (target_similarity + 1.0) / 2.0
    model_similarity = model_similarity / np.sum(model_similarity, axis=1, keepdims=True)
    target_similarity = target_similarity / np.sum(target_similarity, axis=1, keepdims=True)
    return np.mean(target_similarity * np.log((target_similarity + eps) / (model_similarity + eps)))


def _cc_mat_by_gaussian_rbf(linear_outputs, gamma, max_p, constant=1):
    row_list = []
    for linear_output in linear_outputs:
        row = constant
        right_term = linear_output @ linear_outputs.T
        for p in range(1, max_p + 1):
            left_term = ((2 * gamma) ** p) / math.factorial(p)
            row = row + left_term * (right_term**p)
        row = row * math.exp(-2 * gamma)
        row_list.append(row)
    return np.stack(row_list)


def correlation_congruence(teacher, student, gamma=0.4, order=2, constant=1):
    """yoshitomo-matsubara/torchdistill torchdistill/losses/mid_level.py (3e4373c) `CCKDLoss.forward`.

    kernel_config {'type': 'gaussian', 'gamma': gamma, 'max_p': order}, reduction 'batchmean'.
    `constant=0` leaves out the Taylor sums' first term, equal for both kernels (the same loss, without
    the float64 cancellation of 1 + 1e-20 − 1 for tiny features).
    """
    teacher_linear_outputs, student_linear_outputs = _flat64(teacher), _flat64(student)
    batch_size = teacher_linear_outputs.shape[0]
    teacher_cc = _cc_mat_by_gaussian_rbf(teacher_linear_outputs, gamma, order, constant)
    student_cc = _cc_mat_by_gaussian_rbf(student_linear_outputs, gamma, order, constant)
    cc_loss = np.sqrt(((student_cc - teacher_cc) ** 2).sum())  # torch.dist(student_cc, teacher_cc, 2)
    return cc_loss / (batch_size**2)


def dark_rank(teacher, student, alpha=3.0, beta=3.0, list_length=4):
    """lenscloth/RKD metric/loss.py (92c8563) `HardDarkRank.forward(student, teacher)`; permute_len = list_length."""
    student, teacher = _flat64(student), _flat64(teacher)
    score_teacher = -1 * alpha * pdist(teacher, squared=False) ** beta
    score_student = -1 * alpha * pdist(student, squared=False) ** beta
    # score_teacher.sort(dim=1, descending=True)[1][:, 1:(permute_len + 1)]
    permute_idx = np.argsort(-score_teacher, axis=1, kind="stable")[:, 1 : (list_length + 1)]
    ordered_student = np.take_along_axis(score_student, permute_idx, axis=1)
    log_prob = (
        ordered_student
        - np.stack([_logsumexp(ordered_student[:, i:], axis=1) for i in range(permute_idx.shape[1])], axis=1)
    ).sum(axis=1)
    return (-1 * log_prob).mean()


def attention_transfer(teacher_map, student_map):
    """lenscloth/RKD metric/loss.py (92c8563) `AttentionTransfer.forward(student, teacher)`, on NCHW copies."""
    student = np.moveaxis(np.asarray(student_map, np.float64), -1, 1)
    teacher = np.moveaxis(np.asarray(teacher_map, np.float64), -1, 1)
    s_attention = _normalize((student**2).mean(1).reshape(student.shape[0], -1))
    t_attention = _normalize((teacher**2).mean(1).reshape(teacher.shape[0], -1))
    return ((s_attention - t_attention) ** 2).mean()


def fitnet(teacher, student, weight):
    """lenscloth/RKD metric/loss.py (92c8563) `FitNet.forward(student, teacher)`.

    `weight` is the 1×1 convolution's `(out, in)` kernel; maps come channels last and are moved to NCHW.
    """
    student = np.asarray(student, np.float64)
    teacher = np.asarray(teacher, np.float64)
    if student.ndim == 2:
        student = student[:, :, None, None]
        teacher = teacher[:, :, None, None]
    else:
        student, teacher = np.moveaxis(student, -1, 1), np.moveaxis(teacher, -1, 1)
    transformed = np.einsum("oi,nihw->nohw", np.asarray(weight, np.float64), student)
    return ((transformed - teacher) ** 2).mean()


def prototypical_loss(support, query):
    """jakesnell/prototypical-networks protonets/models/few_shot.py (8fdc675) `Protonet.loss`, on embeddings.

    `support` `(n_class, n_support, D)` and `query` `(n_class, n_query, D)` are the encoder's outputs `z`
    of `xs` and `xq`; `euclidean_dist` (protonets/models/utils.py) is the squared distance of every pair.
    """
    support, query = np.asarray(support, np.float64), np.asarray(query, np.float64)
    n_class, n_query, z_dim = query.shape
    z_proto = support.mean(axis=1)
    zq = query.reshape(n_class * n_query, z_dim)
    dists = ((zq[:, None, :] - z_proto[None, :, :]) ** 2).sum(axis=2)
    log_p_y = _log_softmax(-dists, axis=1).reshape(n_class, n_query, n_class)
    target_inds = np.arange(n_class)[:, None].repeat(n_query, axis=1)
    return -np.take_along_axis(log_p_y, target_inds[:, :, None], axis=2).mean()


def _torch_std(x):
    """torch.Tensor.std(dim=-1, keepdims=True): Bessel's correction (divide by C − 1)."""
    return x.std(axis=-1, ddof=1, keepdims=True)


def _standardize(logit):
    """sunshangquan/logit-standardization-KD mdistiller/distillers/KD.py `normalize(logit)`."""
    mean = logit.mean(axis=-1, keepdims=True)
    stdv = _torch_std(logit)
    return (logit - mean) / (1e-7 + stdv)


def hinton_kd_standardized(teacher_logits, student_logits, temperature=4.0):
    """sunshangquan/logit-standardization-KD mdistiller/distillers/KD.py `kd_loss(s, t, T, logit_stand=True)`."""
    logits_student = _standardize(np.asarray(student_logits, np.float64))
    logits_teacher = _standardize(np.asarray(teacher_logits, np.float64))
    log_pred_student = _log_softmax(logits_student / temperature, axis=1)
    pred_teacher = _softmax(logits_teacher / temperature, axis=1)
    # F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    pointwise = np.where(pred_teacher > 0, pred_teacher * (np.log(np.where(pred_teacher > 0, pred_teacher, 1.0)) - log_pred_student), 0.0)
    return pointwise.sum(1).mean() * temperature**2


def _kl_div_sum(log_input, target):
    """F.kl_div(log_input, target, size_average=False): Σ target·(log target − log_input), 0 where target = 0."""
    safe = np.where(target > 0, target, 1.0)
    return np.where(target > 0, target * (np.log(safe) - log_input), 0.0).sum()


def dkd(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0, temperature=4.0, standardize=False):
    """megvii-research/mdistiller mdistiller/distillers/DKD.py `dkd_loss(s, t, target, alpha, beta, T)`.

    `standardize=True`: sunshangquan/logit-standardization-KD mdistiller/distillers/DKD.py with `logit_stand`.
    """
    logits_student = np.asarray(student_logits, np.float64)
    logits_teacher = np.asarray(teacher_logits, np.float64)
    if standardize:
        logits_student, logits_teacher = _standardize(logits_student), _standardize(logits_teacher)
    target = np.asarray(labels).reshape(-1)
    gt_mask = np.zeros_like(logits_student, dtype=bool)
    gt_mask[np.arange(len(target)), target] = True
    other_mask = ~gt_mask
    pred_student = _softmax(logits_student / temperature, axis=1)
    pred_teacher = _softmax(logits_teacher / temperature, axis=1)

    def cat_mask(t):
        return np.concatenate([(t * gt_mask).sum(1, keepdims=True), (t * other_mask).sum(1, keepdims=True)], axis=1)

    pred_student, pred_teacher = cat_mask(pred_student), cat_mask(pred_teacher)
    with np.errstate(divide="ignore"):
        log_pred_student = np.log(pred_student)
    tckd_loss = _kl_div_sum(log_pred_student, pred_teacher) * temperature**2 / target.shape[0]
    pred_teacher_part2 = _softmax(logits_teacher / temperature - 1000.0 * gt_mask, axis=1)
    log_pred_student_part2 = _log_softmax(logits_student / temperature - 1000.0 * gt_mask, axis=1)
    nckd_loss = _kl_div_sum(log_pred_student_part2, pred_teacher_part2) * temperature**2 / target.shape[0]
    return alpha * tckd_loss + beta * nckd_loss


def _relaxed_pdist(A, eps=1e-12):
    """tjddus9597/LabelRelaxation-CVPR21 code/Relaxed_losses.py `pdist(A, A, squared=False)`."""
    D = (A**2).sum(1)[None, :] + (-2) * A @ A.T
    D = np.clip((A**2).sum(1)[None, :] + D.T, eps, None)
    D = np.sqrt(D)
    np.fill_diagonal(D, 0.0)
    return D


def relaxed_contrastive(teacher, student, sigma=1.0, delta=1.0):
    """tjddus9597/LabelRelaxation-CVPR21 code/Relaxed_losses.py `Relaxed_Contra.forward(t_emb, s_emb)`.

    Their `t_emb` is the target model (our student), `s_emb` the source model (our teacher).
    """
    t_emb, s_emb = _flat64(student), _flat64(teacher)
    s_emb = _normalize(s_emb)
    T_dist = _relaxed_pdist(t_emb)
    dist_mean = T_dist.mean(1, keepdims=True)
    T_dist = T_dist / dist_mean
    S_dist = _relaxed_pdist(s_emb)
    P = np.exp(-(S_dist**2) / sigma)
    pull_losses = np.maximum(T_dist, 0) ** 2 * P
    push_losses = np.maximum(delta - T_dist, 0) ** 2 * (1 - P)
    keep = T_dist > 0
    return (pull_losses[keep].sum() + push_losses[keep].sum()) / len(t_emb)
