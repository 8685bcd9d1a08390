"""Classification: flat classifiers with stable layer names, RKD on L2-normalised rows, and the paper's recipe on real data."""

import keras
import numpy as np
import pytest

import reference
from rkd_keras import Distiller, RKDAngle, RKDDistance, classifier_model, embedding_model, load_dataset, presets
from rkd_keras.choices import BACKBONE_STAGES
from rkd_keras.data import materialize
from rkd_keras.terms import build_terms


def _unit_rows(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.mark.parametrize("wrapper, port", [(RKDDistance, reference.rkd_distance), (RKDAngle, reference.rkd_angle)])
def test_rkd_with_l2_normalize_is_the_official_loss_on_normalised_rows(wrapper, port, rng):
    """The classification branch's F.normalize(e_s), F.normalize(e_t) before RKD, against the float64 port."""
    teacher = (5.0 * rng.normal(size=(16, 12))).astype("float32")
    student = (0.1 * rng.normal(size=(16, 3, 2))).astype("float32")  # another width and rank: rows are flattened
    expected = port(_unit_rows(teacher), _unit_rows(student))
    normalised = float(wrapper(l2_normalize=True)(teacher, student))
    assert normalised == pytest.approx(expected, rel=1e-5)
    # The option changes the loss: the raw rows' relations differ from the normalised rows'.
    assert float(wrapper()(teacher, student)) == pytest.approx(port(teacher, student), rel=1e-5)
    assert abs(port(teacher, student) - expected) > 0.1 * expected
    # Serialized with the loss, and only when on, so the other wrappers' configs are unchanged.
    restored = keras.losses.deserialize(keras.losses.serialize(wrapper(l2_normalize=True)))
    assert restored.get_config()["l2_normalize"] is True
    assert float(restored(teacher, student)) == normalised
    assert "l2_normalize" not in wrapper().get_config()
    with pytest.raises(ValueError, match="l2_normalize must be True or False, received 'yes'"):
        wrapper(l2_normalize="yes")


def test_flat_models_expose_every_stage_pool_and_head_at_the_top_level():
    for build, head in ((lambda: embedding_model("resnet18", 16, input_shape=(32, 32, 3)), "embedding"),
                        (lambda: classifier_model("resnet18", 7, input_shape=(32, 32, 3)), "logits")):  # fmt: skip
        model = build()
        assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested backbone
        shapes = [tuple(model.get_layer(name).output.shape[1:]) for name in (*BACKBONE_STAGES["resnet18"], "pool", head)]
        assert shapes[:5] == [(8, 8, 64), (4, 4, 128), (2, 2, 256), (1, 1, 512), (512,)]
        assert shapes[5][0] == (16 if head == "embedding" else 7)
    classifier = classifier_model("small_cnn", 10, input_shape=(28, 28, 1), width=8)
    assert [tuple(classifier.get_layer(name).output.shape[1:]) for name in ("stage1", "stage2", "stage3", "pool", "logits")] == [
        (28, 28, 8), (14, 14, 16), (7, 7, 32), (32,), (10,)
    ]
    # The same backbone and parameters as the embedding model, another head: 32·10 + 10 against 32·32 + 32.
    embedder = embedding_model("small_cnn", 32, input_shape=(28, 28, 1), width=8, l2_normalize=False)
    assert classifier.count_params() - 330 == embedder.count_params() - 1056 == 19_432 - 1056
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, received 1"):
        classifier_model("small_cnn", 1, input_shape=(28, 28, 1))


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_the_papers_classification_recipe_distils_a_student_on_real_fashion_mnist():
    """Cross-entropy + HKD on the logits + RKD-DA on the L2-normalised pooled features: a short fit beats the untrained student."""
    keras.utils.set_random_seed(0)

    def arrays(split, count):
        dataset = load_dataset("fashion_mnist", split, task="classification", image_size=28, channels=1,
                               validation_fraction=0.1)  # fmt: skip
        return materialize(dataset.take(count))

    (images, labels), validation = arrays("train", 6_000), arrays("validation", 1_000)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = classifier_model("small_cnn", 10, input_shape=(28, 28, 1), width=8, name="teacher")
    teacher.compile(keras.optimizers.Adam(3e-3), loss=cross_entropy, metrics=["accuracy"])
    # 300 steps each: BatchNormalization's moving statistics (momentum 0.9) must have settled for inference.
    teacher.fit(images, labels, batch_size=60, epochs=3, verbose=0)
    student = classifier_model("small_cnn", 10, input_shape=(28, 28, 1), width=4, name="student")
    distiller = Distiller(teacher, student, terms=build_terms(presets.CLASSIFICATION_RECIPE["terms"]))
    distiller.compile(keras.optimizers.Adam(3e-3), loss=cross_entropy, metrics=["accuracy"])
    untrained = distiller.evaluate(*validation, batch_size=500, verbose=0, return_dict=True)
    history = distiller.fit(images, labels, batch_size=60, epochs=3, validation_data=validation, verbose=0).history
    assert {"hinton_kd", "rkd_distance_pool", "rkd_angle_pool", "task_loss"} <= set(history)
    assert np.all(np.isfinite(history["rkd_angle_pool"])) and min(history["rkd_distance_pool"]) > 0
    assert untrained["accuracy"] < 0.3  # ten classes: about chance
    assert history["val_accuracy"][-1] > untrained["accuracy"] + 0.3
