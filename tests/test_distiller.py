"""Distiller: training with fit, freezing, logs, compile options, saving."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import mlp
from rkd_keras import Distiller, Term, rkd_angle, rkd_distance

RKD_KEYS = {"loss", "rkd_distance", "rkd_angle"}


def test_fit_lowers_rkd_loss_and_leaves_the_teacher_untouched(teacher, clusters):
    before = [w.copy() for w in teacher.get_weights()]
    distiller = Distiller(teacher, mlp(16, 8, "student"))
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(clusters[0], batch_size=64, epochs=5, verbose=0).history
    assert set(history) == RKD_KEYS
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    total = np.array(history["rkd_distance"]) + 2.0 * np.array(history["rkd_angle"])
    np.testing.assert_allclose(history["loss"], total, rtol=1e-5)
    # Weights and BatchNorm moving statistics, bit for bit.
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert not teacher.trainable


def test_loss_is_the_weighted_sum_of_the_terms(teacher, clusters):
    x = clusters[0][:64]
    student = mlp(16, 8, "student")
    distiller = Distiller(teacher, student, distance_weight=0.3, angle_weight=5.0)
    distiller.compile("adam")
    logs = distiller.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    t, s = teacher(x, training=False), student(x, training=False)
    np.testing.assert_allclose(logs["rkd_distance"], float(rkd_distance(t, s)), rtol=1e-5)
    np.testing.assert_allclose(logs["rkd_angle"], float(rkd_angle(t, s)), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.3 * logs["rkd_distance"] + 5.0 * logs["rkd_angle"], rtol=1e-5)


@pytest.mark.parametrize("options", [{"jit_compile": True}, {"run_eagerly": True}, {"steps_per_execution": 2}])
def test_fit_and_evaluate_under_compile_options(teacher, clusters, options):
    distiller = Distiller(teacher, mlp(16, 8, "student"))
    distiller.compile(keras.optimizers.Adam(1e-2), **options)
    history = distiller.fit(clusters[0], batch_size=64, epochs=3, verbose=0).history
    assert set(history) == RKD_KEYS
    assert history["loss"][-1] < history["loss"][0]
    logs = distiller.evaluate(clusters[0], batch_size=64, verbose=0, return_dict=True)
    assert set(logs) == RKD_KEYS and np.isfinite(logs["loss"])


def test_task_loss_and_metrics_on_the_student(teacher, clusters):
    x, labels = clusters
    student = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8)], name="classifier")
    distiller = Distiller(teacher, student, angle_weight=0.0, task_loss_weight=0.5)
    distiller.compile(
        "adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    history = distiller.fit(x, labels, batch_size=64, epochs=2, verbose=0).history
    assert set(history) == {"loss", "task_loss", "rkd_distance", "accuracy"}
    np.testing.assert_allclose(
        history["loss"], 0.5 * np.array(history["task_loss"]) + np.array(history["rkd_distance"]), rtol=1e-5
    )
    logs = distiller.evaluate(x, labels, batch_size=64, verbose=0, return_dict=True)
    expected = keras.metrics.SparseCategoricalAccuracy()
    expected.update_state(labels, student.predict(x, verbose=0))
    np.testing.assert_allclose(logs["accuracy"], float(expected.result()), rtol=1e-6)


def test_zero_weight_terms_are_not_computed_or_logged(teacher, clusters):
    distiller = Distiller(teacher, mlp(16, 8, "student"), distance_weight=0.0)
    distiller.compile("adam", loss="mse")  # compiled, but task_loss_weight stays 1
    history = distiller.fit(clusters[0], np.zeros((320, 8)), batch_size=64, epochs=1, verbose=0).history
    assert set(history) == {"loss", "task_loss", "rkd_angle"}


def test_only_the_student_is_updated_and_regularization_counts(teacher, clusters):
    x = clusters[0][:64]
    inputs = keras.Input((12,))
    regularized = keras.layers.Dense(4, kernel_regularizer=keras.regularizers.L2(0.1))
    student = keras.Model(inputs, regularized(inputs))
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.0))
    logs = distiller.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    penalty = 0.1 * float(np.sum(regularized.kernel.numpy() ** 2))
    np.testing.assert_allclose(logs["loss"], logs["rkd_distance"] + 2 * logs["rkd_angle"] + penalty, rtol=1e-5)
    assert [v.name for v in distiller.trainable_variables] == [v.name for v in student.trainable_variables]


def test_save_load_predicts_identically_and_keeps_training(teacher, clusters, tmp_path):
    x = clusters[0]
    distiller = Distiller(teacher, mlp(16, 8, "student"), distance_weight=0.5)
    distiller.compile(keras.optimizers.Adam(1e-2))
    distiller.fit(x, batch_size=64, epochs=2, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.models.load_model(tmp_path / "distiller.keras")
    assert isinstance(restored, Distiller) and restored.distance_weight == 0.5
    np.testing.assert_array_equal(restored.predict(x, verbose=0), distiller.predict(x, verbose=0))
    np.testing.assert_array_equal(restored.teacher.predict(x, verbose=0), teacher.predict(x, verbose=0))
    assert not restored.teacher.trainable
    # The optimizer state came back too: both continue identically.
    assert int(restored.optimizer.iterations) == int(distiller.optimizer.iterations) == 10
    for model in (distiller, restored):
        model.fit(x[:64], batch_size=64, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(restored.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)


def test_a_distiller_saved_before_training_loads_its_optimizer_state_without_keras_skipping_it(teacher, clusters, tmp_path):
    x = clusters[0]
    distiller = Distiller(teacher, mlp(16, 8, "student"))
    distiller.compile(keras.optimizers.Adam(1e-2))
    distiller.optimizer.learning_rate.assign(3e-3)  # a state the config does not hold: only the saved variables do
    distiller.save(tmp_path / "untrained.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.models.load_model(tmp_path / "untrained.keras")
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)], [str(w.message) for w in caught]
    assert np.isclose(float(restored.optimizer.learning_rate), 3e-3) and int(restored.optimizer.iterations) == 0
    # Its slots exist, and it trains on as the original does.
    assert len(restored.optimizer.variables) > 2
    distiller.optimizer.build(distiller.trainable_variables)
    for model in (distiller, restored):
        model.fit(x[:64], batch_size=64, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(restored.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)


def test_task_loss_without_labels_is_a_clear_error(teacher, clusters):
    distiller = Distiller(teacher, mlp(16, 8, "student"))
    distiller.compile("adam", loss="mse")
    with pytest.raises(ValueError, match="must be \\(x, y\\) pairs, but received inputs without labels"):
        distiller.fit(clusters[0], batch_size=64, epochs=1, verbose=0)


class DropsLastRow(keras.Model):
    def call(self, x):
        return x[:-1]


def test_teacher_and_student_batch_sizes_must_match(clusters):
    teacher = DropsLastRow()
    teacher.build((None, 12))
    distiller = Distiller(teacher, mlp(16, 8, "student"))
    distiller.compile("adam", run_eagerly=True)
    with pytest.raises(ValueError, match="received 63 teacher rows and 64 student rows"):
        distiller.fit(clusters[0][:64], batch_size=64, epochs=1, verbose=0)


def test_nothing_to_train_is_refused(teacher):
    distiller = Distiller(teacher, mlp(16, 8, "student"), distance_weight=0, angle_weight=0)
    with pytest.raises(ValueError, match="Nothing to train"):
        distiller.compile("adam")


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_invalid_weights_are_refused(teacher, weight):
    with pytest.raises(ValueError, match="angle_weight"):
        Distiller(teacher, mlp(16, 8, "student"), angle_weight=weight)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_finite_decreasing_rkd_losses(policy, clusters):
    keras.mixed_precision.set_global_policy(policy)
    distiller = Distiller(mlp(64, 32, "teacher"), mlp(16, 8, "student"))
    distiller.compile(keras.optimizers.Adam(1e-2))
    # Loss scaling (LossScaleOptimizer) is needed, and applied, for float16 only.
    scaled = isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    history = distiller.fit(clusters[0], batch_size=64, epochs=4, verbose=0).history
    for term in ("rkd_distance", "rkd_angle"):
        assert np.all(np.isfinite(history[term]))
        assert history[term][-1] < 0.8 * history[term][0], history[term]
    assert distiller.student.layers[-1].compute_dtype == policy.split("_")[1]


def _copy_weights(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def test_cached_teacher_embeddings_train_exactly_like_the_teacher_pass(teacher, clusters):
    """Two epochs of 5 batches each way: same per-epoch losses and student weights."""
    student = mlp(16, 8, "student")
    runs = {}
    for cached in (False, True):
        distiller = Distiller(teacher, _copy_weights(student))
        distiller.compile(keras.optimizers.Adam(1e-2))
        x = distiller.cache_teacher_embeddings(clusters[0]) if cached else clusters[0]
        history = distiller.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0).history
        runs[cached] = history["loss"], distiller.student.get_weights()
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_cached_dataset_feeds_pk_batches_with_the_same_batches(teacher, clusters):
    from rkd_keras import pk_batches

    dataset = tf.data.Dataset.from_tensor_slices(clusters)
    student = mlp(16, 8, "student")
    weights = []
    for cached in (False, True):
        distiller = Distiller(teacher, _copy_weights(student))
        distiller.compile(keras.optimizers.Adam(1e-2), loss=None)
        data = distiller.cache_teacher_embeddings(dataset) if cached else dataset
        distiller.fit(pk_batches(data, 4, 8, seed=3, num_batches=4), epochs=2, verbose=0)
        weights.append(distiller.student.get_weights())
    for a, b in zip(*weights):
        # atol: the output bias gets a zero gradient (the relational losses ignore a shift), which Adam turns
        # into lr-sized steps of float rounding noise (±4e-5 seen on an AMD EPYC); real weights move ~0.1.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


class NonFiniteTeacher(keras.Model):
    def call(self, x):
        return x * np.nan


def test_non_finite_teacher_embeddings_are_a_clear_error(clusters):
    # Checked in the graph; XLA (jit_compile=True) drops such runtime checks.
    teacher = NonFiniteTeacher()
    teacher.build((None, 12))
    distiller = Distiller(teacher, mlp(16, 8, "student"))
    distiller.compile("adam", jit_compile=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        r"The teacher produced NaN/Inf embeddings for this batch, whose inputs are finite; check its weights "
        r"\(was it trained to NaN\?\)\. Tensor: the teacher's output"
    )):
        distiller.fit(clusters[0][:64], batch_size=64, epochs=1, verbose=0)


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("run_eagerly", [False, True])
def test_non_finite_inputs_are_a_clear_error_before_the_student_changes(clusters, cached, run_eagerly):
    # In a compiled step TensorFlow's ReLU maps NaN to 0: the teacher's tensors stay finite, the student's do not.
    x = clusters[0][:64].copy()
    x[5, 3] = np.nan
    teacher = mlp(16, 8, "teacher")
    student = mlp(16, 8, "student")
    before = student.get_weights()
    distiller = Distiller(teacher, student)
    distiller.compile("adam", run_eagerly=run_eagerly)
    data = distiller.cache_teacher_embeddings(x) if cached else x
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        r"The inputs of this batch hold NaN/Inf values; check the input pipeline \(NaN pixels, a normalization "
        r"dividing by zero\)"
    )):
        distiller.fit(data, batch_size=64, epochs=1, verbose=0)
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unbuilt_teacher_is_refused():
    with pytest.raises(ValueError, match="teacher 'untrained' is not built, so it holds no trained weights"):
        Distiller(keras.Sequential([keras.layers.Dense(4)], name="untrained"), mlp(16, 8, "student"))


def test_teacher_that_is_not_a_keras_model_is_refused():
    with pytest.raises(TypeError, match="teacher must be a Keras model or layer, received function"):
        Distiller(lambda x: x, mlp(16, 8, "student"))


class _StopInEpoch(keras.callbacks.Callback):
    """Kills training inside epoch `epoch` (0-based), as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._current_epoch == self.epoch and batch == 1:
            raise KeyboardInterrupt("killed")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch


def test_backup_and_restore_resumes_to_the_uninterrupted_result(teacher, clusters, tmp_path):
    """Killed in epoch 3 of 4 and resumed: same student as a run never killed."""
    student = mlp(16, 8, "student")

    def run(callbacks):
        distiller = Distiller(teacher, _copy_weights(student))
        distiller.compile(keras.optimizers.Adam(1e-2))
        distiller.fit(clusters[0], batch_size=64, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
        return distiller

    uninterrupted = run([]).student.get_weights()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(KeyboardInterrupt):
        run([backup, _StopInEpoch(2)])
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert resumed.optimizer.iterations.numpy() == 4 * 5
    for a, b in zip(resumed.student.get_weights(), uninterrupted):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_teacher_that_is_the_student_is_refused(teacher):
    with pytest.raises(ValueError, match="The teacher and the student are the same model \\('teacher'\\)"):
        Distiller(teacher, teacher)


def test_a_student_sharing_weights_with_the_teacher_is_refused(teacher):
    inputs = keras.Input((12,))
    student = keras.Model(inputs, keras.layers.Dense(8)(teacher.layers[1](inputs)), name="student")
    with pytest.raises(ValueError, match="The student 'student' shares 2 weights with the teacher 'teacher' \\(e.g. "
                                         "'dense/kernel'\\); freezing the teacher would freeze them in the student"):
        Distiller(teacher, student)
    assert teacher.trainable  # refused before anything was frozen


def two_outputs(name):
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = {"embedding": keras.layers.Dense(8, name="embedding")(hidden), "logits": keras.layers.Dense(3, name="logits")(hidden)}
    return keras.Model(inputs, outputs, name=name)


def test_a_teacher_with_a_dict_output_is_refused_unless_a_term_selects_a_layer(clusters):
    teacher = two_outputs("teacher")
    with pytest.raises(ValueError, match=(
        "The teacher 'teacher' returns a dict \\(keys 'embedding', 'logits'\\), but term 'rkd_distance' compares the "
        "teacher's output, which must be one tensor. Select one with Term\\(..., teacher_layer='<layer name>'\\)"
    )):
        Distiller(teacher, mlp(16, 8, "student"))
    distiller = Distiller(teacher, mlp(16, 8, "student"), terms=[Term("rkd_angle", teacher_layer="embedding")])
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(clusters[0], batch_size=64, epochs=2, verbose=0).history
    assert history["rkd_angle"][-1] < history["rkd_angle"][0]


def test_a_student_with_a_dict_output_trains_on_selected_layers_but_takes_no_task_loss(teacher, clusters):
    student = two_outputs("student")
    distiller = Distiller(teacher, student, terms=[Term("rkd_angle", student_layer="embedding")])
    with pytest.raises(ValueError, match="The student 'student' returns several outputs, but a task loss or metrics"):
        distiller.compile("adam", loss="mse")
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(clusters[0], batch_size=64, epochs=2, verbose=0).history
    assert history["rkd_angle"][-1] < history["rkd_angle"][0]
    assert set(distiller.predict(clusters[0][:4], verbose=0)) == {"embedding", "logits"}


def test_global_batch_relations_must_be_a_boolean(teacher):
    """"no" was read as True (a non-empty string)."""
    for value in ("no", 0, None):
        with pytest.raises(ValueError) as raised:
            Distiller(teacher, mlp(16, 8, "student"), global_batch_relations=value)
        assert str(raised.value) == f"`global_batch_relations` must be True or False, received {value!r}."
    assert teacher.trainable  # refused before anything was frozen
    assert Distiller(teacher, mlp(16, 8, "student"), global_batch_relations=False).global_batch_relations is False


FROZEN_STUDENT = (
    "The student 'teacher' has no trainable weights: its layers are frozen (trainable=False), as in a "
    "keras.models.clone_model of a teacher that a Distiller froze, so distilling would change nothing. Unfreeze "
    "them (`for layer in student.layers: layer.trainable = True`), or clone the teacher before distilling it."
)


def test_a_frozen_clone_of_the_teacher_is_refused_as_student_and_trains_once_unfrozen(teacher, clusters):
    """TensorFlow said `not enough values to unpack (expected 2, got 0)`; JAX trained nothing in silence."""
    Distiller(teacher, mlp(16, 8, "student"))  # freezes the teacher
    clone = keras.models.clone_model(teacher)
    with pytest.raises(ValueError) as raised:
        Distiller(teacher, clone)
    assert str(raised.value) == FROZEN_STUDENT
    clone.trainable = True
    with pytest.raises(ValueError, match="its layers are frozen"):  # Keras left the clone's layers frozen
        Distiller(teacher, clone)
    for layer in clone.layers:  # the fix the message names
        layer.trainable = True
    distiller = Distiller(teacher, clone)
    before = [w.copy() for w in clone.get_weights()]
    distiller.compile(keras.optimizers.Adam(1e-2))
    distiller.fit(clusters[0], batch_size=64, epochs=1, verbose=0)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(before, clone.get_weights())) > 1e-3


def test_a_student_frozen_after_the_distiller_is_refused_at_compile(teacher):
    student = mlp(16, 8, "student")
    distiller = Distiller(teacher, student)
    student.trainable = False
    with pytest.raises(ValueError) as raised:
        distiller.compile("adam")
    assert str(raised.value) == (
        "The student 'student' has no trainable weights: student.trainable is False, so distilling would change "
        "nothing. Set `student.trainable = True`."
    )


def test_overflowing_batchnorm_statistics_stop_the_step_naming_the_layer():
    """Images ×1e30 (finite) overflowed the student's BatchNorm variance; the logged loss stayed finite."""
    from rkd_keras import embedding_model

    images = np.random.default_rng(0).uniform(0, 1, size=(16, 16, 16, 1)).astype("float32") * 1e30
    teacher = embedding_model("small_cnn", 8, input_shape=(16, 16, 1), width=2, name="teacher")
    student = embedding_model("small_cnn", 4, input_shape=(16, 16, 1), width=2, name="student")
    first = next(layer for layer in student.layers if isinstance(layer, keras.layers.BatchNormalization))
    before = [w.numpy().copy() for w in student.trainable_weights]
    distiller = Distiller(teacher, student)
    distiller.compile("sgd", jit_compile=False)  # checked in the graph; XLA drops such runtime checks
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        distiller.fit(images, batch_size=8, epochs=1, verbose=0)
    assert (
        f"The student's BatchNorm statistic 'moving_variance' of layer '{first.name}' became NaN/Inf in this step, "
        "whose inputs are finite, so the weights were not updated: the activations reaching that layer overflow "
        "float32 (scale or normalize the inputs, e.g. to [0, 1])"
    ) in str(raised.value)
    for old, new in zip(before, student.trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_a_non_finite_loss_of_finite_tensors_stops_the_step(teacher, clusters):
    student = mlp(16, 8, "student")
    before = student.get_weights()
    distiller = Distiller(teacher, student, terms=[Term(lambda t, s: keras.ops.log(-keras.ops.mean(s ** 2)), name="log")])
    distiller.compile("sgd", jit_compile=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        "The loss is NaN/Inf for this batch, whose inputs, teacher tensors and student BatchNorm statistics are "
        "finite, so the step was not applied"
    )):
        distiller.fit(clusters[0][:64], batch_size=64, epochs=1, verbose=0)
    for a, b in zip(before[:2] + before[-2:], student.get_weights()[:2] + student.get_weights()[-2:]):
        np.testing.assert_array_equal(a, b)  # the Dense kernels and biases (BatchNorm's statistics moved)


def test_cached_teacher_tensors_of_another_width_are_refused(teacher, clusters):
    """Tensors cached from a 32-d teacher fed to a Distiller of a 16-d one trained on them without a word."""
    cached = Distiller(teacher, mlp(16, 8, "student")).cache_teacher_embeddings(clusters[0][:64])
    other = Distiller(mlp(32, 16, "other_teacher"), mlp(16, 8, "student"))
    other.compile("adam")
    with pytest.raises(ValueError) as raised:
        other.fit(cached, batch_size=64, epochs=1, verbose=0)
    assert str(raised.value) == (
        "The cached teacher tensors of the teacher's output have width 32, but the teacher's output has width 16: "
        "they were cached from another teacher or layer. Cache them again with this Distiller's "
        "cache_teacher_embeddings."
    )
