"""Distillation terms: KD, RKD, attention, FitNet and the rest on named layers of small CNN classifiers."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from rkd_keras import Distiller, Term, losses
from rkd_keras.losses import hinton_kd, rkd_angle, rkd_distance
from rkd_keras.terms import INPUTS, TEACHER_TENSORS

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RELATIONAL = {"rkd_distance", "rkd_angle", "dark_rank", "similarity_preserving", "pkt", "correlation_congruence",
              "dist_kd", "relaxed_contrastive"}
PER_EXAMPLE = {"hinton_kd", "dkd", "attention_transfer", "fitnet"}
# Which layers each kind of loss reads in these classifiers; any other loss reads the pooled features.
READS = {
    "hinton_kd": (None, None),
    "dist_kd": (None, None),
    "dkd": (None, None),
    "attention_transfer": ("stage2", "stage2"),
    "fitnet": ("stage3", "stage3"),
}
NOT_DISTILLATION = {"triplet_loss", "prototypical_loss"}  # compares labels with embeddings, not a teacher with a student


class Counting(keras.layers.Layer):
    """The identity, counting its calls: how many times the model around it ran."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x


def classifier(filters, name, classes=4, strides=(1, 2, 2), counting=False):
    """16×16×1 → stage1 (16×16) → BN → stage2 (8×8) → stage3 (4×4) → pool → logits, all named."""
    inputs = keras.Input((16, 16, 1))
    h = Counting(name="count")(inputs) if counting else inputs
    h = keras.layers.Conv2D(filters, 3, strides=strides[0], padding="same", activation="relu", name="stage1")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Conv2D(filters, 3, strides=strides[1], padding="same", activation="relu", name="stage2")(h)
    h = keras.layers.Conv2D(2 * filters, 3, strides=strides[2], padding="same", activation="relu", name="stage3")(h)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(pooled), name=name)


@pytest.fixture
def images(rng):
    """128 images of 4 classes, each class a bright square in its own corner, plus noise; and labels."""
    labels = np.arange(128) % 4
    x = rng.normal(scale=0.3, size=(128, 16, 16, 1))
    for label, (row, column) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        x[labels == label, row:row + 8, column:column + 8] += 1.0
    return x.astype("float32"), labels


@pytest.fixture
def teacher():
    """A random teacher whose BatchNorm statistics are not the defaults."""
    model = classifier(8, "teacher")
    model.get_layer("bn").moving_mean.assign(np.linspace(-0.1, 0.1, 8))
    model.get_layer("bn").moving_variance.assign(np.linspace(0.5, 2.0, 8))
    return model


def layer_output(model, layer, x):
    """The output of a layer computed by a model of its own, independently of the Distiller."""
    return keras.Model(model.input, model.get_layer(layer).output)(x, training=False)


def every_term():
    """One term of every distillation loss in `rkd_keras.losses.LOSSES`, on the layers it suits."""
    names = [name for name in losses.LOSSES if name not in NOT_DISTILLATION]
    return [Term(name, 0.5, *READS.get(name, ("pool", "pool"))) for name in names]


def test_a_term_is_its_loss_on_the_two_tensors(rng):
    teacher, student = rng.normal(size=(2, 16, 8)).astype("float32")
    assert float(Term("rkd_angle")(teacher, student)) == float(rkd_angle(teacher, student))
    term = Term(losses.HintonKD(temperature=2.0), weight=0.5, name="kd")
    np.testing.assert_allclose(float(term(teacher, student)), float(hinton_kd(teacher, student, temperature=2.0)))
    # A Keras loss gives per-example values; the term is their mean.
    mse = Term(keras.losses.MeanSquaredError(reduction=None))(teacher, student)
    np.testing.assert_allclose(float(mse), np.mean((teacher - student) ** 2), rtol=1e-6)


def test_a_term_of_a_keras_loss_keeps_its_reduction():
    teacher = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]], "float32")
    student = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "float32")  # per-example squared errors 1, 0, 4
    mse = keras.losses.MeanSquaredError
    assert float(Term(mse())(teacher, student)) == float(mse()(teacher, student)) == np.float32(5.0 / 3.0)
    assert float(Term(mse(reduction="sum"))(teacher, student)) == float(mse(reduction="sum")(teacher, student)) == 5.0
    assert float(Term(mse(reduction=None))(teacher, student)) == np.float32(5.0 / 3.0)  # per-example: the term's mean


def test_terms_say_whether_they_compare_relations_across_the_batch():
    kinds = {name: Term(name).relational for name in losses.LOSSES if name not in NOT_DISTILLATION}
    assert {name for name, relational in kinds.items() if relational} == RELATIONAL
    assert {name for name, relational in kinds.items() if not relational} == PER_EXAMPLE
    assert not Term(keras.losses.KLDivergence()).relational  # Keras's own losses: per example
    assert repr(Term("pkt", 0.5, "pool")) == "<Term 'pkt': 0.5 · pkt(teacher 'pool', student output), relational>"
    assert repr(Term("fitnet", name="hint")) == (
        "<Term 'hint': 1 · fitnet(teacher output, student output), per-example>"
    )


def test_a_term_round_trips_through_its_config():
    term = Term(losses.HintonKD(temperature=2.0), weight=3.0, teacher_layer="logits", name="kd_t2")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert isinstance(restored, Term) and restored.get_config() == term.get_config()
    assert restored.loss.get_config()["temperature"] == 2.0 and restored.student_layer is None


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_a_weight_that_is_negative_or_not_finite_is_refused(weight):
    with pytest.raises(ValueError, match="The weight of term 'rkd_angle' must be a finite number >= 0"):
        Term("rkd_angle", weight=weight)


def test_kd_on_logits_and_rkd_on_pooled_features_train_a_classifier(images, teacher):
    """The paper's best classification setting: CE + Hinton's KD on the logits + RKD-DA on the pooled features."""
    x, labels = images
    before = [w.copy() for w in teacher.get_weights()]
    terms = [
        Term("hinton_kd"),
        Term("rkd_distance", 1.0, teacher_layer="pool", student_layer="pool", name="rkd_d_pool"),
        Term("rkd_angle", 2.0, teacher_layer="pool", student_layer="pool", name="rkd_a_pool"),
    ]
    distiller = Distiller(teacher, classifier(4, "student"), terms=terms)
    distiller.compile(keras.optimizers.Adam(1e-2), loss=CE)
    history = distiller.fit(x, labels, batch_size=32, epochs=6, verbose=0).history
    assert set(history) == {"loss", "task_loss", "hinton_kd", "rkd_d_pool", "rkd_a_pool"}
    for key, values in history.items():
        assert values[-1] < values[0], (key, values)
    # Weights and BatchNorm moving statistics, bit for bit.
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)

    batch, batch_labels = x[:64], labels[:64]
    logs = distiller.evaluate(batch, batch_labels, batch_size=64, verbose=0, return_dict=True)
    student = distiller.student
    t_pool, s_pool = layer_output(teacher, "pool", batch), layer_output(student, "pool", batch)
    s_logits = student(batch, training=False)
    np.testing.assert_allclose(logs["rkd_d_pool"], float(rkd_distance(t_pool, s_pool)), rtol=1e-5)
    np.testing.assert_allclose(logs["rkd_a_pool"], float(rkd_angle(t_pool, s_pool)), rtol=1e-5)
    np.testing.assert_allclose(logs["hinton_kd"], float(hinton_kd(teacher(batch, training=False), s_logits)), rtol=1e-5)
    np.testing.assert_allclose(logs["task_loss"], float(CE(batch_labels, s_logits)), rtol=1e-5)
    weighted = logs["task_loss"] + logs["hinton_kd"] + logs["rkd_d_pool"] + 2.0 * logs["rkd_a_pool"]
    np.testing.assert_allclose(logs["loss"], weighted, rtol=1e-6)


def test_attention_transfer_on_three_stages_trains(images, teacher):
    terms = [Term("attention_transfer", 100.0, f"stage{i}", f"stage{i}", name=f"at_stage{i}") for i in (1, 2, 3)]
    distiller = Distiller(teacher, classifier(4, "student"), terms=terms)
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(images[0], batch_size=32, epochs=5, verbose=0).history
    assert set(history) == {"loss", "at_stage1", "at_stage2", "at_stage3"}
    for key, values in history.items():
        assert values[-1] < 0.9 * values[0], (key, values)


def test_attention_transfer_between_stages_of_different_sizes_names_both_layers(teacher):
    student = classifier(4, "student", strides=(1, 1, 2))  # stage2 stays 16×16 where the teacher's is 8×8
    term = Term("attention_transfer", teacher_layer="stage2", student_layer="stage2")
    with pytest.raises(ValueError, match=(
        r"Term 'attention_transfer' \(attention_transfer\) cannot compare teacher layer 'stage2' of shape "
        r"\(None, 8, 8, 8\) with student layer 'stage2' of shape \(None, 16, 16, 4\)"
    )):
        Distiller(teacher, student, terms=[term])
    assert teacher.trainable  # refused before the teacher was frozen


def test_five_terms_run_each_model_once_per_step(images):
    teacher = classifier(8, "teacher", counting=True)
    student = classifier(4, "student", counting=True)
    terms = [
        Term("hinton_kd"),
        Term("rkd_distance", teacher_layer="pool", student_layer="pool"),
        Term("rkd_angle", 2.0, teacher_layer="pool", student_layer="pool"),
        Term("attention_transfer", teacher_layer="stage2", student_layer="stage2"),
        Term("fitnet", teacher_layer="stage3", student_layer="stage3"),
    ]
    distiller = Distiller(teacher, student, terms=terms)
    distiller.compile("adam", loss=CE, run_eagerly=True)
    counters = [teacher.get_layer("count"), student.get_layer("count")]
    runs = []

    class CountRuns(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.before = [c.calls for c in counters]

        def on_train_batch_end(self, batch, logs=None):
            runs.append([c.calls - b for c, b in zip(counters, self.before)])

    history = distiller.fit(images[0], images[1], batch_size=32, epochs=1, verbose=0, callbacks=[CountRuns()])
    assert len(history.history) == 1 + 1 + 5  # loss, task_loss and the five terms
    assert runs == [[1, 1]] * 4  # four steps: the teacher once and the student once in each
    before = [c.calls for c in counters]
    distiller.evaluate(images[0], images[1], batch_size=128, verbose=0)
    assert [c.calls - b for c, b in zip(counters, before)] == [1, 1]


def named_mlp(hidden, out, name):
    inputs = keras.Input((12,))
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, keras.layers.Dense(out, name="out")(h), name=name)


@pytest.mark.parametrize("policy, options", [
    ("float32", {"jit_compile": True}),
    ("float32", {"steps_per_execution": 2}),
    ("mixed_float16", {}),
    ("mixed_bfloat16", {}),
])
def test_terms_train_under_xla_several_steps_per_call_and_mixed_precision(clusters, policy, options):
    keras.mixed_precision.set_global_policy(policy)
    terms = [Term("hinton_kd"), Term("rkd_angle", 2.0, "hidden", "hidden"), Term("fitnet", 0.1, "bn", "bn")]
    distiller = Distiller(named_mlp(32, 8, "teacher"), named_mlp(16, 8, "student"), terms=terms)
    distiller.compile(keras.optimizers.Adam(1e-2), **options)
    history = distiller.fit(clusters[0], batch_size=64, epochs=4, verbose=0).history
    for key, values in history.items():
        assert np.all(np.isfinite(values)) and values[-1] < values[0], (key, values)
    assert distiller.regressors[0].compute_dtype == policy.split("_")[-1]


def test_fitnet_regressor_trains_with_the_student(images, teacher):
    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("fitnet", 1.0, "stage3", "stage3")])
    (regressor,) = distiller.regressors
    assert regressor.kernel.shape == (8, 16)  # student's 8 channels of stage3 → the teacher's 16
    assert np.max(np.abs(regressor.kernel.numpy())) <= 0.005  # the official initialisation
    trained = {v.path for v in distiller.trainable_variables}
    assert trained == {v.path for v in distiller.student.trainable_variables} | {regressor.kernel.path}
    start = regressor.kernel.numpy().copy()
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(images[0], batch_size=32, epochs=3, verbose=0).history
    assert history["fitnet"][-1] < history["fitnet"][0]
    assert np.max(np.abs(regressor.kernel.numpy() - start)) > 1e-3


def test_a_distiller_with_every_kind_of_term_round_trips_through_a_keras_file(images, teacher, tmp_path):
    x, labels = images
    distiller = Distiller(teacher, classifier(4, "student"), terms=every_term())
    distiller.compile(keras.optimizers.Adam(1e-3), loss=CE)
    distiller.fit(x, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.models.load_model(tmp_path / "distiller.keras")
    assert [t.get_config() for t in restored.terms] == [t.get_config() for t in distiller.terms]
    np.testing.assert_array_equal(restored.predict(x, verbose=0), distiller.predict(x, verbose=0))
    for old, new in zip(distiller.regressors, restored.regressors):
        np.testing.assert_array_equal(old.kernel.numpy(), new.kernel.numpy())
    # The optimizer state came back too: both continue identically.
    histories = [
        model.fit(x, labels, batch_size=64, epochs=1, shuffle=False, verbose=0).history
        for model in (distiller, restored)
    ]
    assert histories[0] == histories[1]
    np.testing.assert_array_equal(restored.predict(x, verbose=0), distiller.predict(x, verbose=0))
    np.testing.assert_array_equal(restored.regressors[0].kernel.numpy(), distiller.regressors[0].kernel.numpy())


def test_the_exported_student_holds_no_regressor(images, teacher, tmp_path):
    from rkd_keras import export_student

    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("fitnet", 1.0, "stage3", "stage3")])
    path = export_student(distiller, tmp_path / "student")
    loaded = tf.saved_model.load(str(path))
    student_weights = sorted(int(np.prod(w.shape)) for w in distiller.student.weights)
    assert sorted(int(np.prod(v.shape)) for v in loaded.variables) == student_weights
    assert not any("regressor" in v.name for v in loaded.variables)
    np.testing.assert_allclose(loaded.serve(images[0][:8]).numpy(), distiller.student(images[0][:8]), atol=1e-6)


def test_cached_teacher_tensors_of_several_layers_train_like_the_teacher_pass(images, teacher):
    x, labels = images
    terms = [Term("hinton_kd"), Term("rkd_angle", 2.0, "pool", "pool"), Term("fitnet", 0.0, "stage3", "stage3")]
    student = classifier(4, "student")
    runs = []
    for cached in (False, True):
        copy = keras.models.clone_model(student)
        copy.set_weights(student.get_weights())
        distiller = Distiller(teacher, copy, terms=terms)
        distiller.compile(keras.optimizers.Adam(1e-2), loss=CE)
        data = distiller.cache_teacher_embeddings(x) if cached else x
        if cached:
            # The zero-weight FitNet term reads stage3, which is not computed, so not cached.
            assert set(data) == {INPUTS, TEACHER_TENSORS} and set(data[TEACHER_TENSORS]) == {"logits", "pool"}
            np.testing.assert_allclose(data[TEACHER_TENSORS]["pool"], layer_output(teacher, "pool", x), atol=1e-6)
        history = distiller.fit(data, labels, batch_size=32, epochs=2, shuffle=False, verbose=0).history
        runs.append((history, distiller.student.get_weights()))
    assert set(runs[0][0]) == {"loss", "task_loss", "hinton_kd", "rkd_angle"}
    for key in runs[0][0]:
        # float32 steps on other kernels (the cached path batches differently): 1.6e-5 seen on an AMD EPYC.
        np.testing.assert_allclose(runs[1][0][key], runs[0][0][key], rtol=1e-4)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_tensors_cached_for_other_terms_are_refused(images, teacher):
    x = images[0][:32]
    on_outputs = Distiller(teacher, classifier(4, "student"))
    pooled = Distiller(teacher, classifier(4, "student"), terms=[Term("rkd_angle", 1.0, "pool", "pool")])
    both = Distiller(teacher, classifier(4, "student"), terms=[Term("hinton_kd"), Term("rkd_angle", 1, "pool", "pool")])
    for distiller, cache, message in [
        (pooled, on_outputs, "the teacher's output \\(cached\\), but the terms read its layer 'pool'"),
        (both, pooled, "the teacher's layer 'pool' \\(cached\\), but the terms read its output and layer 'pool'"),
        (on_outputs, both, "the teacher's output and layer 'pool' \\(cached\\), but the terms read its output"),
    ]:
        distiller.compile("adam")
        with pytest.raises(ValueError, match=f"The batch carries {message}. Cache them with this Distiller's"):
            distiller.fit(cache.cache_teacher_embeddings(x), batch_size=32, verbose=0)


@pytest.mark.parametrize("terms", [None, [Term("hinton_kd"), Term("rkd_angle", 2.0, "pool", "pool")]])
def test_cached_teacher_rows_that_do_not_match_the_inputs_are_refused(images, teacher, terms):
    x, labels = images[0][:64], images[1][:64]
    distiller = Distiller(teacher, classifier(4, "student"), terms=terms)
    distiller.compile("adam")
    cached = distiller.cache_teacher_embeddings(x)
    cached[TEACHER_TENSORS] = keras.tree.map_structure(lambda rows: rows[:63], cached[TEACHER_TENSORS])
    message = (
        r"Teacher and student tensors must come from the same batch: the cached batch holds 63 teacher rows for 64 "
        r"inputs\. Cache the teacher's tensors of these very inputs: x = distiller.cache_teacher_embeddings\(inputs\)"
    )
    with pytest.raises(ValueError, match=message):
        distiller.fit(cached, batch_size=32, verbose=0)  # Keras's own check raised AttributeError here
    with pytest.raises(ValueError, match=message):
        distiller.fit(cached, labels, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match=message):
        distiller.evaluate(x=cached, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match=message):
        distiller.predict(cached, batch_size=32, verbose=0)


def test_terms_and_shortcut_weights_together_are_refused(teacher):
    with pytest.raises(ValueError, match="Pass either `terms` or `angle_weight`, not both"):
        Distiller(teacher, classifier(4, "student"), terms=[Term("hinton_kd")], angle_weight=2.0)


def test_an_unknown_layer_name_lists_the_layers_there_are(teacher):
    with pytest.raises(ValueError, match=(
        r"Term 'rkd_angle' reads student layer 'poool', but the student 'student' has no layer of that name\. "
        r"Did you mean 'pool'\? Its layers are: 'input_layer.*', 'stage1', 'bn', 'stage2', 'stage3', 'pool', 'logits'\."
    )):
        Distiller(teacher, classifier(4, "student"), terms=[Term("rkd_angle", 1.0, "pool", student_layer="poool")])


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, name="hidden")

    def call(self, x):
        return self.hidden(keras.ops.reshape(x, (-1, 256)))


def test_a_named_layer_of_a_subclassed_model_says_to_build_it_functionally(teacher):
    student = Subclassed(name="sub")
    student(np.ones((1, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match=(
        r"reads student layer 'hidden', but the student 'sub' is a subclassed model, whose inner tensors cannot "
        r"be selected\. Build the student with the functional API .* or compare its output \(student_layer=None\)"
    )):
        Distiller(teacher, student, terms=[Term("rkd_angle", teacher_layer="pool", student_layer="hidden")])
    # Its output can be compared: the check of the shapes waits for the first step.
    distiller = Distiller(teacher, student, terms=[Term("rkd_angle", teacher_layer="pool")])
    distiller.compile("adam")
    logs = distiller.evaluate(np.ones((8, 16, 16, 1), "float32"), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "rkd_angle"} and np.isfinite(logs["loss"])


def sequential_classifier(filters, name, input_layer=True):
    """`classifier` as a keras.Sequential model (same layers, names and weights' shapes)."""
    layers = [
        keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="stage1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name="stage2"),
        keras.layers.Conv2D(2 * filters, 3, strides=2, padding="same", activation="relu", name="stage3"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(4, name="logits"),
    ]
    return keras.Sequential([keras.Input((16, 16, 1)), *layers] if input_layer else layers, name=name)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_layer_terms_on_a_sequential_model_train_as_on_the_same_functional_model(images, teacher, role):
    x, labels = images
    terms = [Term("hinton_kd"), Term("rkd_distance", 1.0, "pool", "stage3"), Term("rkd_angle", 2.0, "stage2", "pool")]
    functional, sequential = classifier(4, "other"), sequential_classifier(4, "other")
    sequential.set_weights(functional.get_weights())
    runs = []
    for other in (functional, sequential):
        if role == "student":
            distiller = Distiller(teacher, other, terms=terms)
        else:
            student = keras.models.clone_model(teacher)
            student.set_weights(teacher.get_weights())
            distiller = Distiller(other, student, terms=terms)
        distiller.compile(keras.optimizers.SGD(0.1), loss=CE)
        history = distiller.fit(x, labels, batch_size=32, epochs=2, shuffle=False, verbose=0).history
        runs.append((history, distiller.student.get_weights()))
    assert set(runs[0][0]) == {"loss", "task_loss", "hinton_kd", "rkd_distance", "rkd_angle"}
    assert runs[0][0]["loss"][1] < runs[0][0]["loss"][0]
    for key in runs[0][0]:
        # float32 steps on other kernels (the cached path batches differently): 1.6e-5 seen on an AMD EPYC.
        np.testing.assert_allclose(runs[1][0][key], runs[0][0][key], rtol=1e-4)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_sequential_model_without_an_input_shape_says_how_to_give_it_one(teacher):
    student = sequential_classifier(4, "seq", input_layer=False)
    with pytest.raises(ValueError, match=(
        r"Term 'rkd_angle' reads student layer 'pool', but the student 'seq' is a keras.Sequential model whose "
        r"input shape is not known yet, .* keras.Sequential\(\[keras.Input\(shape\), ...\]\), or build it first "
        r"\(student.build\(\(None, \*shape\)\)\)"
    )):
        Distiller(teacher, student, terms=[Term("rkd_angle", 1.0, "pool", "pool")])
    student.build((None, 16, 16, 1))
    distiller = Distiller(teacher, student, terms=[Term("rkd_angle", 1.0, "pool", "pool")])
    distiller.compile("adam")
    logs = distiller.evaluate(np.ones((8, 16, 16, 1), "float32"), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "rkd_angle"} and np.isfinite(logs["loss"])


@pytest.mark.parametrize("name, message", [
    ("loss", "A term cannot be named 'loss': the logs use that key. Give it another name."),
    ("task_loss", "A term cannot be named 'task_loss': the logs use that key."),
    ("val_kd", "A term cannot be named 'val_kd': fit logs the validation value of a term named 'kd' under that key. "
               "Give it a name without the 'val_' prefix, e.g. 'kd_term'."),
    ("", "A term's name must be a non-empty string, received ''."),
])
def test_a_term_may_not_take_a_key_the_logs_hold_already(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Term("hinton_kd", name=name)


def test_the_terms_of_a_distiller_need_distinct_names(teacher):
    terms = [Term("hinton_kd", name="kd"), Term("dist_kd", name="kd")]
    with pytest.raises(ValueError, match="Two terms are named 'kd', and each term is logged under its name"):
        Distiller(teacher, classifier(4, "student"), terms=terms)


def top_two(y_true, y_pred):
    return keras.metrics.sparse_top_k_categorical_accuracy(y_true, y_pred, k=2)


@pytest.mark.parametrize("metrics, weighted_metrics", [
    (["accuracy"], None),
    (["acc", keras.metrics.SparseCategoricalAccuracy(name="hits"), top_two], None),
    ({"logits": ["accuracy", "accuracy"]}, None),
    (["accuracy"], ["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2)]),
])
def test_a_term_named_as_a_compiled_metric_is_refused_at_compile(images, teacher, metrics, weighted_metrics):
    # Keras itself says which keys its metrics are logged under: every one of them is refused as a term's name.
    plain = classifier(4, "plain")
    plain.compile("sgd", loss=CE, metrics=metrics, weighted_metrics=weighted_metrics)
    logged = set(plain.evaluate(*images, verbose=0, return_dict=True)) - {"loss"}
    assert len(logged) == len(keras.tree.flatten(metrics)) + len(keras.tree.flatten(weighted_metrics or []))
    for name in sorted(logged):
        distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("hinton_kd", name=name)])
        with pytest.raises(ValueError, match=(
            f"Term '{name}' has the name of a compiled metric, and the logs hold one value per name: the metric's "
            f"would replace the term's. Rename the term, e.g. Term\\(..., name='{name}_term'\\)"
        )):
            distiller.compile("sgd", loss=CE, metrics=metrics, weighted_metrics=weighted_metrics)
    # A name Keras does not log is free, and both values are logged.
    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("hinton_kd", name="kd")])
    distiller.compile("sgd", loss=CE, metrics=metrics, weighted_metrics=weighted_metrics)
    logs = distiller.evaluate(*images, verbose=0, return_dict=True)
    assert set(logs) == logged | {"loss", "task_loss", "kd"}


def test_terms_must_be_term_objects(teacher):
    with pytest.raises(TypeError, match=r"`terms` must hold rkd_keras.Term objects, received str \('hinton_kd'\)"):
        Distiller(teacher, classifier(4, "student"), terms=["hinton_kd"])


def test_a_term_of_a_plain_function_cannot_be_saved_and_nothing_is_written(teacher, tmp_path):
    def mean_gap(teacher, student):
        return keras.ops.mean(teacher) - keras.ops.mean(student)

    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term(mean_gap)])
    with pytest.raises(ValueError, match="Term 'mean_gap' holds a plain function, which a saved model cannot store"):
        distiller.save(tmp_path / "distiller.keras")
    assert not (tmp_path / "distiller.keras").exists()


@pytest.mark.parametrize("name, layer", [("fitnet", "stage3"), ("hinton_kd", None), ("rkd_angle", "pool")])
def test_a_library_loss_function_is_the_same_term_as_its_name(teacher, name, layer):
    """`Term(rkd_keras.losses.fitnet)` dropped FitNet's regressor, and KD and FitNet were labelled relational."""
    function = getattr(losses, name)
    by_function, by_name = Term(function, 0.5, layer, layer), Term(name, 0.5, layer, layer)
    assert by_function.get_config() == by_name.get_config()
    assert by_function.relational == by_name.relational == (name in RELATIONAL)
    assert by_function.uses_regressor == (name == "fitnet")
    distiller = Distiller(teacher, classifier(4, "student"), terms=[by_function])
    assert len(distiller.regressors) == (1 if name == "fitnet" else 0)


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_a_term_of_a_library_loss_function_round_trips_through_a_keras_file_as_its_name_does(teacher, name, tmp_path):
    """Keras saves its own loss functions by name; a Term of `rkd_keras.losses.<fn>` saves as `Term("<fn>")`."""
    # The triplet and prototypical losses compare labels with embeddings: the teacher's tensor plays the labels.
    labelled = name in NOT_DISTILLATION
    teacher_layer, student_layer = (None, "pool") if labelled else READS.get(name, ("pool", "pool"))
    model = classifier(8, "teacher", classes=1) if labelled else teacher
    term = Term(getattr(losses, name), 0.5, teacher_layer, student_layer, name=f"{name}_term")
    distiller = Distiller(model, classifier(4, "student"), terms=[term])
    distiller.save(tmp_path / "distiller.keras")
    (restored,) = keras.models.load_model(tmp_path / "distiller.keras").terms
    assert type(restored.loss) is type(Term(name).loss) is losses.LOSSES[name]
    by_name = Term(name, 0.5, teacher_layer, student_layer, f"{name}_term")
    assert restored.get_config() == term.get_config() == by_name.get_config()
    assert (restored.weight, restored.name, restored.relational) == (0.5, f"{name}_term", term.relational)
    rng = np.random.default_rng(1)
    if labelled:
        # Classes 0, 0, 0, 1: every anchor has one negative, so the triplet loss draws the same triplets each call.
        tensors = np.array([[0.0], [0.0], [0.0], [1.0]], "float32"), rng.normal(size=(4, 8)).astype("float32")
    else:
        compared = model.output if teacher_layer is None else model.get_layer(teacher_layer).output
        tensors = rng.normal(size=(2, 4, *compared.shape[1:])).astype("float32")
    labels = np.array([0, 1, 2, 0]) if term.uses_labels else None
    value = float(term(*tensors, labels))
    assert np.isfinite(value) and float(restored(*tensors, labels)) == value


def nested_teacher():
    """A keras.applications backbone called as one layer, a pooled embedding on top (weights=None, 32×32)."""
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(16, name="embedding")(pooled), name="teacher"), backbone


def small_rgb_student():
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, strides=4, name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    return keras.Model(inputs, keras.layers.Dense(8, name="embedding")(pooled), name="student")


def test_a_term_reads_the_output_of_a_nested_keras_applications_backbone(rng):
    """Keras gives a nested model's own graph's tensor as its `output`: the extractor failed "not connected"."""
    teacher, backbone = nested_teacher()
    distiller = Distiller(teacher, small_rgb_student(),
                          terms=[Term("rkd_angle", teacher_layer=backbone.name, student_layer="conv"), Term("rkd_distance")])
    x = rng.uniform(size=(8, 32, 32, 3)).astype("float32")
    read = distiller._teacher_extractor(x, training=False)
    np.testing.assert_allclose(read[backbone.name], backbone(x, training=False), atol=1e-6)  # one graph: same kernels
    np.testing.assert_allclose(read["embedding"], teacher(x, training=False), atol=1e-6)
    distiller.compile("adam")
    logs = distiller.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["rkd_angle"], float(rkd_angle(backbone(x, training=False), layer_output(
        distiller.student, "conv", x))), rtol=1e-5)


def test_a_layer_inside_a_nested_backbone_is_refused_early_with_the_fix():
    teacher, backbone = nested_teacher()
    with pytest.raises(ValueError) as raised:
        Distiller(teacher, small_rgb_student(), terms=[Term("rkd_angle", teacher_layer="block_13_expand_relu")])
    assert str(raised.value) == (
        f"Term 'rkd_angle' reads teacher layer 'block_13_expand_relu', which is inside the teacher's layer "
        f"{backbone.name!r}, a nested model (e.g. a keras.applications backbone called on the inputs); a term reads "
        f"the teacher's own layers. Read the nested model's output (teacher_layer={backbone.name!r}), or build the "
        "teacher flat: create the backbone on your input, e.g. keras.applications.MobileNetV2(..., "
        "input_tensor=inputs), and add the head on its .output, so that its layers are the model's own."
    )
    assert teacher.trainable  # refused before anything was frozen
    # The fix the message names: the backbone's layers are then the teacher's own.
    inputs = keras.Input((32, 32, 3))
    flat = keras.applications.MobileNetV2(include_top=False, weights=None, input_tensor=inputs, alpha=0.35)
    flat = keras.Model(inputs, keras.layers.Dense(16)(keras.layers.GlobalAveragePooling2D()(flat.output)))
    distiller = Distiller(flat, small_rgb_student(), terms=[Term("rkd_angle", teacher_layer="block_13_expand_relu")])
    assert distiller._teacher_extractor.specs["block_13_expand_relu"].shape == (None, 2, 2, 192)


# Terms that read the labels (DKD): the Distiller passes each batch's y.


def test_a_term_says_whether_it_reads_labels_and_refuses_a_call_without_them(rng):
    assert Term("dkd").uses_labels and Term(losses.dkd).uses_labels
    assert not any(Term(name).uses_labels for name in losses.LOSSES if name not in {"dkd", *NOT_DISTILLATION})
    assert repr(Term("dkd")) == "<Term 'dkd': 1 · dkd(teacher output, student output), per-example, reads labels>"
    teacher, student = rng.normal(size=(2, 6, 5)).astype("float32")
    labels = np.array([0, 1, 2, 3, 4, 0])
    np.testing.assert_allclose(float(Term("dkd")(teacher, student, labels)), float(losses.dkd(teacher, student, labels)))
    with pytest.raises(ValueError, match=r"Term 'dkd' \(dkd\) reads the class labels, but the data holds inputs without"):
        Term("dkd")(teacher, student)


def test_a_dkd_term_is_dkd_of_the_logits_and_the_batchs_labels(images, teacher):
    x, labels = images
    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("dkd", 0.5), Term("hinton_kd", 0.25)])
    distiller.compile(keras.optimizers.Adam(1e-2), loss=CE)
    history = distiller.fit(x, labels, batch_size=32, epochs=4, verbose=0).history
    assert set(history) == {"loss", "task_loss", "dkd", "hinton_kd"}
    assert history["dkd"][-1] < history["dkd"][0] and history["loss"][-1] < history["loss"][0]
    batch, batch_labels = x[:64], labels[:64]
    logs = distiller.evaluate(batch, batch_labels, batch_size=64, verbose=0, return_dict=True)
    t_logits, s_logits = teacher(batch, training=False), distiller.student(batch, training=False)
    np.testing.assert_allclose(logs["dkd"], float(losses.dkd(t_logits, s_logits, batch_labels)), rtol=1e-5)
    other_labels = (batch_labels + 1) % 4  # the term reads these very labels
    assert abs(logs["dkd"] - float(losses.dkd(t_logits, s_logits, other_labels))) > 1e-2 * logs["dkd"]
    weighted = logs["task_loss"] + 0.5 * logs["dkd"] + 0.25 * logs["hinton_kd"]
    np.testing.assert_allclose(logs["loss"], weighted, rtol=1e-6)


@pytest.mark.parametrize("compiled_loss", [False, True])
def test_fit_refuses_a_labelled_term_on_data_without_labels(images, teacher, compiled_loss):
    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("dkd"), Term("rkd_angle", 1.0, "pool", "pool")])
    distiller.compile("adam", loss=CE if compiled_loss else None)
    with pytest.raises(ValueError, match=(
        r"Term 'dkd' reads the class labels, so the data must be \(x, y\) pairs, but received inputs without labels"
    )):
        distiller.fit(images[0], batch_size=32, epochs=1, verbose=0)
    # With its weight at 0 the term is off, and needs no labels.
    off = Distiller(teacher, classifier(4, "student"), terms=[Term("dkd", 0.0), Term("rkd_angle", 1.0, "pool", "pool")])
    off.compile("adam")
    assert set(off.fit(images[0], batch_size=32, epochs=1, verbose=0).history) == {"loss", "rkd_angle"}


def test_a_labelled_term_trains_on_cached_teacher_tensors_as_on_the_teacher_pass(images, teacher):
    x, labels = images
    histories = []
    for cached in (False, True):
        keras.utils.set_random_seed(3)
        distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("dkd"), Term("rkd_distance", 1.0, "pool", "pool")])
        distiller.compile(keras.optimizers.Adam(1e-2), loss=CE)
        data = distiller.cache_teacher_embeddings(x) if cached else x
        histories.append(distiller.fit(data, labels, batch_size=32, epochs=2, shuffle=False, verbose=0).history)
    for key in ("loss", "dkd", "rkd_distance", "task_loss"):
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="Term 'dkd' reads the class labels"):
        distiller.fit(distiller.cache_teacher_embeddings(x), batch_size=32, epochs=1, verbose=0)


def test_term_warmup_ramps_a_terms_weight_per_epoch_and_the_loss_follows(images, teacher):
    """DKD's warm-up min(epoch / 3, 1) over 4 epochs, epochs counted from 1: weights 2/3, 4/3, 2, 2 of 2."""
    from rkd_keras import TermWarmup

    x, labels = images
    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("dkd", 2.0), Term("hinton_kd", 0.5)])
    distiller.compile(keras.optimizers.Adam(1e-2), loss=CE)
    weights = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(distiller.terms[0].weight))
    history = distiller.fit(x, labels, batch_size=32, epochs=4, verbose=0, validation_data=(x[:32], labels[:32]),
                            callbacks=[TermWarmup({"dkd": 3}), record]).history
    np.testing.assert_allclose(weights, [2 / 3, 4 / 3, 2.0, 2.0])
    # The logged loss is the optimised one: each epoch's weight, in training and in fit's validation.
    for prefix in ("", "val_"):
        expected = (np.array(history[f"{prefix}task_loss"]) + np.array(weights) * np.array(history[f"{prefix}dkd"])
                    + 0.5 * np.array(history[f"{prefix}hinton_kd"]))
        np.testing.assert_allclose(history[f"{prefix}loss"], expected, rtol=1e-5, err_msg=prefix)
    assert distiller.terms[0].weight == 2.0 and distiller.terms[1].weight == 0.5  # its own weight after fit
    logs = distiller.evaluate(x[:32], labels[:32], verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], logs["task_loss"] + 2.0 * logs["dkd"] + 0.5 * logs["hinton_kd"], rtol=1e-5)


def test_term_warmup_refuses_a_term_the_distiller_does_not_have(images, teacher):
    from rkd_keras import TermWarmup

    distiller = Distiller(teacher, classifier(4, "student"), terms=[Term("dkd")])
    distiller.compile("adam", loss=CE)
    with pytest.raises(ValueError, match=r"TermWarmup ramps up term 'dkd_logits', but the model has the terms 'dkd'"):
        distiller.fit(*images, batch_size=64, epochs=1, verbose=0, callbacks=[TermWarmup({"dkd_logits": 20})])
    with pytest.raises(ValueError, match=r"warmup epochs of term 'dkd' must be an integer >= 1, received 0"):
        TermWarmup({"dkd": 0})
