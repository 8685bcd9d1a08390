"""Files and training of rkd_keras 0.1.0 (tests/data/release_0_1_0, made by its make.py) still hold."""

from pathlib import Path

import keras
import numpy as np

from rkd_keras import Distiller

RELEASE = Path(__file__).parent / "data" / "release_0_1_0"


def test_a_distiller_saved_by_0_1_0_loads_and_predicts_identically():
    expected = np.load(RELEASE / "expected.npz")
    distiller = keras.models.load_model(RELEASE / "distiller.keras")
    assert isinstance(distiller, Distiller)
    np.testing.assert_array_equal(distiller.predict(expected["x"], verbose=0), expected["predictions"])
    assert not distiller.teacher.trainable


def test_default_distiller_trains_bit_identically_to_0_1_0():
    """RKD-D weight 1 + RKD-A weight 2 on the outputs: the same weights, bit for bit, as 0.1.0 reached."""
    expected = np.load(RELEASE / "expected.npz")
    keras.utils.set_random_seed(0)
    teacher = keras.models.load_model(RELEASE / "teacher.keras")
    student = keras.models.load_model(RELEASE / "student_initial.keras")
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(expected["x"], batch_size=64, epochs=2, shuffle=False, verbose=0).history
    for key in ("loss", "rkd_distance", "rkd_angle"):
        np.testing.assert_array_equal(np.asarray(history[key]), expected[key])
    for i, weight in enumerate(student.get_weights()):
        np.testing.assert_array_equal(weight, expected[f"student_weight_{i}"])
