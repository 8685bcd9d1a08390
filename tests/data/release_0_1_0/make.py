"""Writes the files of this folder with rkd_keras 0.1.0 (commit 73e4d63), the release before terms.

Run from the repository root at that commit: `python tests/data/release_0_1_0/make.py`.
tests/test_compat.py checks that today's code loads `distiller.keras` and trains
`Distiller(teacher, student)` to the very weights 0.1.0 reached.
"""

from pathlib import Path

import keras
import numpy as np

import rkd_keras

HERE = Path(__file__).parent


def mlp(hidden, out, name):
    x = keras.Input((12,))
    h = keras.layers.Dense(hidden, activation="relu")(x)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(x, keras.layers.Dense(out)(h), name=name)


keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
centers = 4.0 * rng.normal(size=(8, 12))
labels = rng.integers(0, 8, 256)
x = (centers[labels] + rng.normal(size=(256, 12))).astype(np.float32)

teacher = mlp(32, 16, "teacher")
teacher.compile("adam", loss="mse")
teacher.fit(x, rng.normal(size=(256, 16)).astype(np.float32), epochs=1, verbose=0)
student = mlp(16, 8, "student")
teacher.save(HERE / "teacher.keras")
student.save(HERE / "student_initial.keras")

distiller = rkd_keras.Distiller(teacher, student)
distiller.compile(keras.optimizers.Adam(1e-2))
history = distiller.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0).history
distiller.save(HERE / "distiller.keras")
np.savez(
    HERE / "expected.npz",
    x=x,
    predictions=distiller.predict(x, verbose=0),
    loss=np.asarray(history["loss"]),
    rkd_distance=np.asarray(history["rkd_distance"]),
    rkd_angle=np.asarray(history["rkd_angle"]),
    **{f"student_weight_{i}": w for i, w in enumerate(student.get_weights())},
)
print({k: v for k, v in history.items()})
