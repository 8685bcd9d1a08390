"""Every loss of rkd_keras.losses on the Keras backend this process runs, for tests/test_backends.py.

`python tests/backend_losses.py OUT.npz` (with `KERAS_BACKEND` set) writes each
case's value and student gradient, and the package's rules as numbers: the
value for a non-finite input, for an empty batch, the gradients of degenerate
batches, the dtype of half-precision inputs, the values at extreme scales. The TensorFlow suite calls
`compute()` in its own process; the JAX and PyTorch runs are subprocesses.
On JAX every loss runs inside `jax.jit`, as in training.
"""

import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from loss_cases import DISTILLATION, VARIANTS, as_float32  # noqa: E402

# Every loss case whose rules are checked: the losses of (teacher, student), DKD and the standardized KD.
RULED = {**DISTILLATION, **VARIANTS}

from rkd_keras import losses  # noqa: E402


def _near_duplicates(rng, n, dim):
    """Half the rows are copies of the other half moved by 1e-4 (unit spread)."""
    base = rng.normal(size=(n // 2, dim))
    return np.concatenate([base, base + 1e-4 * rng.normal(size=base.shape)])


def cases():
    """name → (function of (teacher, student), teacher, student), all float32."""
    rng = np.random.default_rng(11)
    found = {}
    for name, (fn, _, inputs) in RULED.items():
        found[name] = (fn, *as_float32(*inputs(rng, 16)))
    found["rkd_angle_chunks_of_5"] = (
        lambda t, s: losses.rkd_angle(t, s, chunk_size=5), *as_float32(*DISTILLATION["rkd_angle"][2](rng, 23))
    )
    for kind in ("rkd_angle", "rkd_distance", "relaxed_contrastive"):
        fn = DISTILLATION[kind][0]
        found[f"{kind}_near_duplicate_teacher"] = (fn, *as_float32(_near_duplicates(rng, 32, 64), rng.normal(size=(32, 16))))
        found[f"{kind}_near_duplicate_student"] = (fn, *as_float32(rng.normal(size=(32, 64)), _near_duplicates(rng, 32, 64)))
        found[f"{kind}_near_duplicate_both"] = (fn, *as_float32(_near_duplicates(rng, 32, 64), _near_duplicates(rng, 32, 16)))
    labels = np.repeat(np.arange(4), 4)
    for sampling in ("all", "batch_hard"):
        found[f"triplet_{sampling}"] = (
            lambda _, s, sampling=sampling: losses.triplet_loss(labels, s, sampling=sampling),
            *as_float32(np.zeros((16, 1)), rng.normal(size=(16, 8))),
        )
    # One class of 15 and one example of another: each anchor of the first has a single
    # negative to draw, so distance-weighted sampling is deterministic on every backend.
    lonely = np.array([0] * 15 + [1])
    found["triplet_distance_weighted"] = (
        lambda _, s: losses.triplet_loss(lonely, s, sampling="distance_weighted", seed=1),
        *as_float32(np.zeros((16, 1)), 0.3 * rng.normal(size=(16, 8))),
    )
    # A P×K batch of 4 classes × 4: 2 support and 2 queries each; on JAX inside jax.jit as the others.
    found["prototypical_loss"] = (
        lambda _, s: losses.prototypical_loss(labels, s, shots=2), *as_float32(np.zeros((16, 1)), rng.normal(size=(16, 8)))
    )
    return found


SCALES = (1e-20, 1e5, 1e19, 1e20)
SCALED_SIDES = ("both", "teacher")


def value_and_gradient(fn, teacher, student):
    """The loss and its gradient with respect to `student`, as NumPy, on the running backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        student = tf.constant(student)
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = fn(tf.constant(teacher), student)
        gradient = tape.gradient(value, student)
        return value.numpy(), (np.zeros(student.shape, np.float32) if gradient is None else gradient.numpy())
    if backend == "jax":
        import jax

        value, gradient = jax.jit(jax.value_and_grad(lambda t, s: fn(t, s), argnums=1))(teacher, student)
        return np.asarray(value), np.asarray(gradient)
    import torch

    student = torch.tensor(student, requires_grad=True)
    value = fn(torch.tensor(teacher), student)
    value.backward()
    gradient = student.grad
    return value.detach().cpu().numpy(), (np.zeros(student.shape, np.float32) if gradient is None else gradient.cpu().numpy())


def _degenerate(teacher, student):
    """Duplicate, all-equal and all-zero rows, and batches of one and two."""
    t, s = teacher[:5].copy(), student[:5].copy()
    t[3], s[3], t[4], s[4] = t[0], s[0], t[1], s[1]
    yield "duplicate_rows", t, s
    yield "all_equal_rows", np.repeat(teacher[:1], 5, 0), np.repeat(student[:1], 5, 0)
    zero_t, zero_s = teacher[:5].copy(), student[:5].copy()
    zero_t[2:], zero_s[2:] = 0.0, 0.0
    yield "zero_rows", zero_t, zero_s
    yield "n1", teacher[:1], student[:1]
    yield "n2", teacher[:2], student[:2]


def compute():
    """`{key: array}`: `value/<case>`, `gradient/<case>` and the rules, `rule/<loss>/<what>`."""
    out = {}
    for name, (fn, teacher, student) in cases().items():
        out[f"value/{name}"], out[f"gradient/{name}"] = value_and_gradient(fn, teacher, student)
    for name, (fn, teacher, student) in cases().items():
        if name not in RULED:
            continue
        bad = student.copy()
        bad.flat[7] = np.nan
        out[f"rule/{name}/nan_input"] = value_and_gradient(fn, teacher, bad)[0]
        value, gradient = value_and_gradient(fn, teacher[:0], student[:0])
        out[f"rule/{name}/empty_value"], out[f"rule/{name}/empty_gradient_shape"] = value, np.array(gradient.shape)
        for case, t, s in _degenerate(teacher, student):
            value, gradient = value_and_gradient(fn, t, s)
            out[f"rule/{name}/finite_{case}"] = np.array(np.isfinite(value) and np.all(np.isfinite(gradient)))
        half = fn(keras.ops.convert_to_tensor(teacher, "float16"), keras.ops.convert_to_tensor(student, "float16"))
        out[f"rule/{name}/float16_dtype"] = np.array(keras.backend.standardize_dtype(half.dtype))
        rounded = (teacher.astype(np.float16).astype(np.float32), student.astype(np.float16).astype(np.float32))
        out[f"rule/{name}/float16_value"] = np.array([float(keras.ops.convert_to_numpy(half)), float(
            keras.ops.convert_to_numpy(fn(*rounded)))])
    # Extreme but finite scales (tests/test_losses_scales.py checks TensorFlow's values against the ports).
    for name, (fn, teacher, student) in cases().items():
        if name not in DISTILLATION:
            continue
        if keras.backend.backend() == "jax":  # compiled once for the eight calls (eager JAX took 80 s here)
            import jax

            fn = jax.jit(fn)
        for side in SCALED_SIDES:
            for scale in SCALES:
                t = teacher * np.float32(scale) if side in ("both", "teacher") else teacher
                s = student * np.float32(scale) if side in ("both", "student") else student
                out[f"scale/{name}/{side}/{scale:g}"] = np.array(float(keras.ops.convert_to_numpy(fn(t, s))))
    embeddings = cases()["triplet_all"][2]
    labels = np.repeat(np.arange(4), 4)
    for sampling in losses.TRIPLET_SAMPLINGS:
        out[f"rule/triplet_{sampling}/empty_value"] = np.array(
            float(keras.ops.convert_to_numpy(losses.triplet_loss(labels[:0], embeddings[:0], sampling=sampling)))
        )
        bad = embeddings.copy()
        bad[5, 1] = np.nan
        out[f"rule/triplet_{sampling}/nan_input"] = np.array(
            float(keras.ops.convert_to_numpy(losses.triplet_loss(labels, bad, sampling=sampling, seed=0)))
        )
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], backend=keras.backend.backend(), **compute())
