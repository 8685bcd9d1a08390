"""The losses and the Distiller on JAX and PyTorch give what they give on TensorFlow.

The suite runs on TensorFlow (the default backend); Keras fixes its backend
when it is imported, so `backend_losses.py` and `backend_distiller.py` run
once per other backend in a subprocess with `KERAS_BACKEND` set, while this
process computes the TensorFlow reference with the same code. All four
subprocesses run at once, beside the reference.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import backend_distiller
import backend_losses
from backend_losses import RULED
from loss_cases import DISTILLATION

HERE = Path(__file__).parent
BACKENDS = ("jax", "torch")
TIMEOUT = 300  # seconds for each subprocess (they take 10–40 s on 2 cores)

pytestmark = [
    pytest.mark.xdist_group("backends"),  # one worker computes the reference once
    pytest.mark.slow,  # a JAX and a PyTorch process per fixture: six minutes on 2 cores
]


def _start(script, backend, *args):
    # One OpenMP thread: PyTorch's threads spin-wait when the cores are shared (as here, beside the
    # other pytest worker), which made its run 2.5× slower.
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HERE / script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, what):
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{what} did not finish within {TIMEOUT} s; its last output:\n{output[-3000:]}")
    assert process.returncode == 0, f"{what} failed (exit {process.returncode}):\n{output[-5000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{backend: {"losses": npz, "distiller": npz}}` for TensorFlow (here) and each other backend."""
    folder = tmp_path_factory.mktemp("backends")
    losses = {b: _start("backend_losses.py", b, folder / f"losses_{b}.npz") for b in BACKENDS}
    reference = {"losses": backend_losses.compute(), "distiller": backend_distiller.run(folder)}
    keras.mixed_precision.set_global_policy("float32")
    # After the reference: they load the .keras file it saved.
    distillers = {b: _start("backend_distiller.py", b, folder) for b in BACKENDS}
    for backend in BACKENDS:
        _finish(losses[backend], f"The loss run on {backend}")
        _finish(distillers[backend], f"The Distiller run on {backend}")
    found = {"tensorflow": reference}
    for backend in BACKENDS:
        found[backend] = {"losses": dict(np.load(folder / f"losses_{backend}.npz")),
                          "distiller": dict(np.load(folder / f"{backend}.npz"))}
        assert str(found[backend]["losses"]["backend"]) == backend
    found["folder"] = folder
    return found


# A machine without TensorFlow (the GPU machine has none): `tensorflow` cannot be imported, and the
# package is entered without its __init__, which imports the tf.data helpers.
WITHOUT_TENSORFLOW = r"""
import os, sys, types
sys.modules["tensorflow"] = None
package = types.ModuleType("rkd_keras")
package.__path__ = [os.path.join(sys.argv[1], "rkd_keras")]
sys.modules["rkd_keras"] = package
import keras, numpy as np
from rkd_keras.distiller import Distiller
from rkd_keras.models import embedding_model
from rkd_keras.terms import Term
x = np.random.default_rng(0).uniform(0, 255, size=(16, 16, 16, 1)).astype("float32")
teacher = embedding_model("small_cnn", 32, input_shape=(16, 16, 1), width=4)
student = embedding_model("small_cnn", 8, input_shape=(16, 16, 1), width=2, l2_normalize=False)
distiller = Distiller(teacher, student, terms=[Term("rkd_distance"), Term("rkd_angle", 2.0), Term("pkt")])
distiller.compile("adam")
history = distiller.fit(x, batch_size=8, epochs=2, verbose=0).history
assert all(np.isfinite(history["loss"])), history
print(sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow" and sys.modules[name]))
"""


def test_losses_terms_models_and_the_distiller_train_on_jax_without_tensorflow():
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(HERE.parent)], capture_output=True,
                            text=True, timeout=TIMEOUT, env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_loss_gives_the_tensorflow_value_and_gradient(runs, backend):
    """Random inputs, near-duplicate rows for RKD, chunks, the triplet samplings.

    Values to 1e-5 relative; each gradient entry to 1e-4 relative or 1e-4 of
    the gradient's largest entry (measured: 7e-7 and 5e-6 at worst).
    """
    ours, reference = runs[backend]["losses"], runs["tensorflow"]["losses"]
    names = [key.split("/", 1)[1] for key in reference if key.startswith("value/")]
    assert len(names) == 28 and set(RULED) < set(names)
    for name in names:
        expected = float(reference[f"value/{name}"])
        assert expected > 1e-3, name  # every case has a loss to get right
        np.testing.assert_allclose(float(ours[f"value/{name}"]), expected, rtol=1e-5, err_msg=f"{backend} {name}")
        gradient, expected_gradient = ours[f"gradient/{name}"], reference[f"gradient/{name}"]
        scale = float(np.max(np.abs(expected_gradient)))
        assert scale > 0 or name.startswith("triplet"), name
        np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=f"{backend} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_loss_keeps_the_package_rules(runs, backend):
    """NaN for a NaN input, 0 for an empty batch, finite gradients on degenerate batches, float32 from float16.

    The triplet loss's samplings: 0 for an empty batch, NaN for a NaN input.
    """
    rules = runs[backend]["losses"]
    for name in RULED:
        assert np.isnan(rules[f"rule/{name}/nan_input"]), name
        assert float(rules[f"rule/{name}/empty_value"]) == 0.0, name
        assert rules[f"rule/{name}/empty_gradient_shape"][0] == 0, name
        for case in ("duplicate_rows", "all_equal_rows", "zero_rows", "n1", "n2"):
            assert bool(rules[f"rule/{name}/finite_{case}"]), (name, case)
        assert str(rules[f"rule/{name}/float16_dtype"]) == "float32", name
        half, rounded = rules[f"rule/{name}/float16_value"]
        np.testing.assert_allclose(half, rounded, rtol=1e-5, err_msg=name)
    for sampling in ("distance_weighted", "batch_hard", "all"):
        assert float(rules[f"rule/triplet_{sampling}/empty_value"]) == 0.0, sampling
        assert np.isnan(rules[f"rule/triplet_{sampling}/nan_input"]), sampling


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_loss_at_extreme_scales_gives_the_tensorflow_value(runs, backend):
    """Inputs ×1e-20, ×1e5, ×1e19, ×1e20 (both sides, the teacher only): TensorFlow's value to 1e-4 relative
    (tests/test_losses_scales.py holds it to the float64 port), or inf/NaN where TensorFlow's is."""
    ours, reference = runs[backend]["losses"], runs["tensorflow"]["losses"]
    keys = [key for key in reference if key.startswith("scale/")]
    assert len(keys) == len(DISTILLATION) * len(backend_losses.SCALED_SIDES) * len(backend_losses.SCALES)
    for key in keys:
        value, expected = float(ours[key]), float(reference[key])
        if np.isfinite(expected):
            tolerance = 1e-4 * abs(expected) + np.finfo(np.float32).tiny
            assert abs(value - expected) <= tolerance, (backend, key, value, expected)
        else:
            assert not np.isfinite(value), (backend, key, value, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_distiller_trains_as_on_tensorflow_and_leaves_the_teacher_untouched(runs, backend):
    """RKD-D and RKD-A on the embeddings, KD on the logits, FitNet on the hidden layers, cross-entropy: 3 epochs."""
    ours, reference = runs[backend]["distiller"], runs["tensorflow"]["distiller"]
    keys = {"loss", "task_loss", "rkd_distance", "rkd_angle", "hinton_kd", "fitnet", "accuracy", "val_recall_at_1"}
    assert {key.split("/")[1] for key in ours if key.startswith("fit/") and ours[key].shape == (3,)} == keys
    assert ours["fit/loss"][-1] < 0.8 * ours["fit/loss"][0]
    for key in keys:
        np.testing.assert_allclose(ours[f"fit/{key}"], reference[f"fit/{key}"], rtol=1e-5, err_msg=key)
    assert bool(ours["fit/teacher_unchanged"]) and not bool(ours["fit/teacher_trainable"])
    assert float(ours["fit/norm_statistics_change"]) > 0.05  # the student's BatchNorm statistics moved
    weights = sorted(key for key in ours if key.startswith("fit/weight_"))
    assert len(weights) == 11  # the student's 10 (BatchNorm's 4 included) and the FitNet regressor's kernel
    for key in weights:
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_term_that_reads_labels_trains_as_on_tensorflow(runs, backend):
    """DKD on the logits with each batch's labels, beside RKD-A, from the teacher's pass and from cached tensors."""
    ours, reference = runs[backend]["distiller"], runs["tensorflow"]["distiller"]
    for key in ("loss", "task_loss", "dkd", "rkd_angle", "cached_loss"):
        assert ours[f"labelled/{key}"].shape == (3,), key
        np.testing.assert_allclose(ours[f"labelled/{key}"], reference[f"labelled/{key}"], rtol=1e-5, err_msg=key)
    assert ours["labelled/dkd"][-1] < ours["labelled/dkd"][0]
    np.testing.assert_allclose(ours["labelled/cached_loss"], ours["labelled/loss"], rtol=1e-5)
    assert str(ours["labelled/without_labels"]).startswith(
        "ValueError: Term 'dkd' reads the class labels, so the data must be (x, y) pairs"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_seed_gives_the_same_result_twice(runs, backend):
    ours = runs[backend]["distiller"]
    np.testing.assert_array_equal(ours["seed/loss"][0], ours["seed/loss"][1])
    assert ours["seed/loss"][0][-1] < ours["seed/loss"][0][0]
    assert float(ours["seed/max_weight_difference"]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_files_round_trip_and_load_on_another_backend(runs, backend):
    ours, reference = runs[backend]["distiller"], runs["tensorflow"]["distiller"]
    assert float(ours["roundtrip/max_prediction_difference"]) == 0.0 and not bool(ours["roundtrip/teacher_trainable"])
    assert float(ours["roundtrip/max_difference_after_a_step"]) == 0.0  # the optimizer state came back
    # Saved on TensorFlow, loaded there; saved there, loaded here on TensorFlow.
    np.testing.assert_allclose(ours["from_tensorflow/predictions"], reference["fit/predictions"], atol=1e-5)
    restored = keras.models.load_model(runs["folder"] / f"{backend}.keras")
    np.testing.assert_allclose(restored.predict(backend_distiller.X, verbose=0), ours["fit/predictions"], atol=1e-5)
    assert not restored.teacher.trainable


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_losses(runs, backend, policy):
    ours = runs[backend]["distiller"]
    assert bool(ours[f"{policy}/loss_scaled"]) == (policy == "mixed_float16")
    assert str(ours[f"{policy}/compute_dtype"]) == policy.split("_")[1]
    for term in ("loss", "rkd_distance", "rkd_angle", "hinton_kd", "fitnet"):
        assert np.all(np.isfinite(ours[f"{policy}/{term}"])), term
        assert ours[f"{policy}/{term}"][-1] < ours[f"{policy}/{term}"][0], term


@pytest.mark.parametrize("backend", BACKENDS)
def test_retrieval_recall_logs_the_recall_of_the_student(runs, backend):
    ours = runs[backend]["distiller"]
    assert ours["fit/val_recall_at_1"].shape == (3,)
    assert float(ours["fit/val_recall_at_1"][-1]) == float(ours["recall/direct"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_embed_reads_a_tf_data_dataset_on_every_backend(runs, backend):
    """JAX's and PyTorch's predict took TensorFlow tensors and crashed (the README's example on JAX)."""
    ours = runs[backend]["distiller"]
    np.testing.assert_allclose(ours["recall/dataset"], ours["fit/predictions"], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_teacher_tensors_train_like_the_teacher_pass(runs, backend):
    ours = runs[backend]["distiller"]
    np.testing.assert_allclose(ours["cache/loss"], ours["fit/loss"], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_teacher_trains_with_the_distance_weighted_triplet_loss(runs, backend):
    loss = runs[backend]["distiller"]["triplet/loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0], loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_models_leave_the_callers_images_unchanged(runs, backend):
    """PyTorch's in-place preprocess_input once gave a Distiller's student the teacher's preprocessed batch."""
    assert bool(runs[backend]["distiller"]["models/input_unchanged"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eager", [False, True])
def test_a_non_finite_teacher_is_an_error(runs, backend, eager):
    """A compiled JAX step gave a NaN loss; its checks are now a status the host reads after the step."""
    assert str(runs[backend]["distiller"][f"nan_teacher/eager={eager}"]).startswith(
        "ValueError: The teacher produced NaN/Inf embeddings for this batch, whose inputs are finite; check its weights"
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("cached", [False, True])
def test_non_finite_inputs_are_an_error(runs, backend, eager, cached):
    """Also when the teacher's tensors are cached, and in a compiled JAX step (which trained to NaN weights)."""
    assert str(runs[backend]["distiller"][f"nan_inputs/eager={eager}/cached={cached}"]) == (
        "ValueError: The inputs of this batch hold NaN/Inf values; check the input pipeline (NaN pixels, a "
        "normalization dividing by zero)."
    )


# Keras runs PyTorch one step at a time (steps_per_execution=1 only).
@pytest.mark.parametrize("backend, steps", [("jax", 1), ("jax", 2), ("torch", 1)])
def test_a_refused_step_leaves_the_weights_of_the_last_good_step(runs, backend, steps):
    """NaN in the 3rd batch: 2 steps applied, and the weights are those of a run of the first 2 batches alone."""
    ours = runs[backend]["distiller"]
    key = f"guard/nan_last_batch/steps_per_execution={steps}"
    assert str(ours[key]).startswith("ValueError: The inputs of this batch hold NaN/Inf values")
    assert int(ours[f"{key}/iterations"]) == 2
    # The same two steps on the same data; 1e-6 allows other kernels' float32 rounding, one more SGD step moves ~1e-2.
    assert float(ours[f"{key}/max_difference"]) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_frozen_clone_of_the_teacher_is_refused_as_student(runs, backend):
    """JAX trained a student without trainable weights in silence."""
    assert str(runs[backend]["distiller"]["guard/frozen_clone"]) == (
        "ValueError: The student 'teacher' has no trainable weights: its layers are frozen (trainable=False), as in "
        "a keras.models.clone_model of a teacher that a Distiller froze, so distilling would change nothing. "
        "Unfreeze them (`for layer in student.layers: layer.trainable = True`), or clone the teacher before "
        "distilling it."
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_batchnorm_statistics_stop_the_run_naming_the_layer(runs, backend):
    """Images ×1e30 (finite): JAX trained on with infinite statistics, mapping every image to 0.

    JAX puts back the statistics of before the step; PyTorch (as TensorFlow) leaves the layer's
    overflowed statistic in the model, which the error names.
    """
    ours = runs[backend]["distiller"]
    layer = str(ours["guard/overflow/first_batchnorm"])
    assert str(ours["guard/overflow"]).startswith(
        f"ValueError: The student's BatchNorm statistic 'moving_variance' of layer '{layer}' became NaN/Inf in this "
        "step, whose inputs are finite, so the weights were not updated"
    )
    non_finite = str(ours["guard/overflow/non_finite_after"]).split()
    if backend == "jax":
        assert non_finite == []
    else:
        assert f"{layer}/moving_variance" in non_finite and all("moving_" in path for path in non_finite)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_teacher_tensors_of_another_width_are_refused(runs, backend):
    assert str(runs[backend]["distiller"]["guard/cached_width"]) == (
        "ValueError: The cached teacher tensors of teacher layer 'embedding' have width 16, but teacher layer "
        "'embedding' has width 12: they were cached from another teacher or layer. Cache them again with this Distiller's "
        "cache_teacher_embeddings."
    )


def test_export_student_from_jax_serves_the_same_embeddings_and_is_refused_with_a_route_on_torch(runs):
    assert float(runs["jax"]["distiller"]["export/max_difference"]) <= 1e-5
    error = str(runs["torch"]["distiller"]["export/error"])
    assert error.startswith("NotImplementedError: export_student runs Keras's TensorFlow-based exporters")
    assert "KERAS_BACKEND=tensorflow" in error
    assert not (runs["folder"] / "torch_savedmodel").exists()


@pytest.mark.slow  # 61-134 s measured on 2 cores at load 11-15 (the three backends' runs side by side)
def test_retrieval_metrics_give_the_tensorflow_numbers_on_every_backend_without_tensorflow(tmp_path):
    """Recall@K, MAP@R, R-precision and the neighbours themselves, exactly; also at ×1e19 and ×1e-20.

    The "ties" case has many exactly equal distances, whose order PyTorch's top-k does not fix;
    the other backends run with `import tensorflow` blocked.
    """
    import backend_retrieval

    processes = {b: _start("backend_retrieval.py", b, tmp_path / f"{b}.npz") for b in BACKENDS}
    reference = backend_retrieval.compute()
    for backend, process in processes.items():
        _finish(process, f"The retrieval run on {backend}")
    for backend in BACKENDS:
        ours = dict(np.load(tmp_path / f"{backend}.npz"))
        assert str(ours.pop("backend")) == backend
        assert ours.keys() == reference.keys() and len(reference) == ((2 * 2 + 4) * 2 + 1) * 4 + 2
        for key, expected in reference.items():
            if key == "embed/embeddings":  # another backend's float32 kernels
                np.testing.assert_allclose(ours[key], expected, rtol=1e-5, atol=1e-6, err_msg=f"{backend} {key}")
            else:
                np.testing.assert_array_equal(ours[key], expected, err_msg=f"{backend} {key}")
    scaled = {scale: reference[f"recall/random_x{scale}/euclidean/512"] for scale in ("1e19", "1e-20")}
    for values in scaled.values():
        np.testing.assert_array_equal(values, reference["recall/random/euclidean/512"])
