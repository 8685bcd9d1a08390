"""Files and training of rkd_keras 0.1.0 (tests/data/release_0_1_0, made by its make.py) still hold."""

from pathlib import Path

import keras
import numpy as np

from rkd_keras import Distiller

RELEASE = Path(__file__).parent / "data" / "release_0_1_0"


# The files were recorded on an Intel CPU; other CPUs' float32 kernels round differently (1 ulp in the
# predictions, 1e-7 relative in the losses on an AMD EPYC), so the checks allow float32 rounding: a weight
# loaded wrongly or a changed loss moves the numbers by orders of magnitude more.


def test_a_distiller_saved_by_0_1_0_loads_and_predicts_identically():
    expected = np.load(RELEASE / "expected.npz")
    distiller = keras.models.load_model(RELEASE / "distiller.keras")
    assert isinstance(distiller, Distiller)
    np.testing.assert_allclose(distiller.predict(expected["x"], verbose=0), expected["predictions"], rtol=1e-5, atol=1e-6)
    assert not distiller.teacher.trainable


def test_default_distiller_trains_identically_to_0_1_0():
    """RKD-D weight 1 + RKD-A weight 2 on the outputs: the same losses and weights as 0.1.0 reached."""
    expected = np.load(RELEASE / "expected.npz")
    keras.utils.set_random_seed(0)
    teacher = keras.models.load_model(RELEASE / "teacher.keras")
    student = keras.models.load_model(RELEASE / "student_initial.keras")
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(expected["x"], batch_size=64, epochs=2, shuffle=False, verbose=0).history
    for key in ("loss", "rkd_distance", "rkd_angle"):
        np.testing.assert_allclose(np.asarray(history[key]), expected[key], rtol=1e-6)
    for i, weight in enumerate(student.get_weights()):
        # atol: two biases get a zero gradient (RKD ignores a shift), which Adam turns into lr-sized steps of
        # rounding noise (5e-5 here); the other weights moved 0.03-0.8 from their initial values.
        np.testing.assert_allclose(weight, expected[f"student_weight_{i}"], rtol=1e-5, atol=1e-4)
