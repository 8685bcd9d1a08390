"""Float64 NumPy versions of the official RKD code (lenscloth/RKD, metric/loss.py).

Written in the direct N×N×D form the official code uses, independently of the
library's Gram-matrix implementation.
"""

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


def angles(x):
    x = _flat64(x)
    difference = x[None, :, :] - x[:, None, :]  # [j, i] = x_i - x_j
    norm = np.linalg.norm(difference, axis=2, keepdims=True)
    unit = difference / np.maximum(norm, 1e-12)  # torch F.normalize
    return np.einsum("jid,jkd->jik", unit, unit)


def rkd_distance(teacher, student, delta=1.0):
    return huber(normalized_distances(student) - normalized_distances(teacher), delta).mean()


def rkd_angle(teacher, student, delta=1.0):
    return huber(angles(student) - angles(teacher), delta).mean()
