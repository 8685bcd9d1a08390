"""The paper's recipes and the demo's settings as data: complete, checked, and not changed by their readers."""

import dataclasses

import pytest

from rkd_keras import presets
from rkd_keras.cli.config import RunConfig, check_training


@pytest.mark.parametrize("name", [*presets.PRESETS, "demo"])
@pytest.mark.parametrize("role", presets.ROLES)
def test_every_preset_is_a_valid_run_of_its_role(name, role):
    settings = presets.get(name, role)
    config = RunConfig(**{**presets.get("demo", role), **settings})
    check_training(config, role)
    assert {key: getattr(config, key) for key in settings} == settings


def test_the_paper_recipe_as_the_paper_states_it():
    teacher, student = presets.get("cub200", "teacher"), presets.get("cub200", "student")
    assert (teacher["backbone"], teacher["embedding_dim"], teacher["l2_normalize"]) == ("resnet50", 512, True)
    assert (student["backbone"], student["embedding_dim"], student["l2_normalize"]) == ("resnet18", 128, False)
    assert (student["distance_weight"], student["angle_weight"], student["triplet_weight"]) == (1.0, 2.0, 0.0)
    assert (teacher["classes_per_batch"], teacher["samples_per_class"], teacher["image_size"]) == (25, 5, 224)


def test_get_returns_a_copy():
    recipe = presets.get("cub200", "teacher")
    recipe["lr_decay_epochs"].append(99)
    recipe["epochs"] = 1
    assert presets.PRESETS["cub200"]["teacher"]["lr_decay_epochs"] == [25, 30, 35]
    assert presets.get("cub200", "teacher")["epochs"] == 40


def test_demo_students_differ_from_the_demo_student_only_in_their_loss_weights():
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    for overrides in presets.DEMO["students"].values():
        assert set(overrides) <= {"triplet_weight", "distance_weight", "angle_weight"} <= fields

