"""The paper's recipes and the demo's settings, as plain data.

Like keras-hub's `*_presets.py`: dictionaries that the command line
(`rkd-keras train-teacher --preset cub200`), the examples and API users read.
Their keys are the command line's run settings (`rkd-keras train-teacher
--help` explains each), which map onto the API:

| key | API |
|---|---|
| `dataset`, `image_size`, `resize_size`, `augment`, `channels` | `load_dataset(...)` |
| `backbone`, `embedding_dim`, `l2_normalize`, `weights`, `width` | `embedding_model(...)` |
| `classes_per_batch`, `samples_per_class`, `steps_per_epoch` | `pk_batches(P, K, num_batches=...)` |
| `learning_rate`, `weight_decay`, `lr_decay_epochs`, `lr_decay_factor` | Adam and a step decay of its rate |
| `margin`, `sampling`, `triplet_weight` | `TripletLoss(...)` and its weight |
| `distance_weight`, `angle_weight` | `Distiller(distance_weight=..., angle_weight=...)` |

No TensorFlow is imported here.

Example:
>>> from rkd_keras import presets
>>> recipe = presets.get("cub200", "student")
>>> recipe["backbone"], recipe["embedding_dim"], recipe["angle_weight"]
('resnet18', 128, 2.0)
"""

import copy

# Park et al. (CVPR 2019) §4.1 and the official code's defaults: a ResNet50
# teacher, 512-d and L2-normalized, trained with the triplet loss and
# distance-weighted sampling; 224 crops of 256 images; batches of 25 classes ×
# 5 images (the paper's batch: 128) and 100 iterations an epoch.
_PAPER_TEACHER = {
    "image_size": 224,
    "augment": True,
    "channels": 3,
    "backbone": "resnet50",
    "embedding_dim": 512,
    "l2_normalize": True,
    "weights": "imagenet",
    "epochs": 40,
    "steps_per_epoch": 100,
    "classes_per_batch": 25,
    "samples_per_class": 5,
    "learning_rate": 1e-5,
    "lr_decay_epochs": [25, 30, 35],
    "lr_decay_factor": 0.5,
    "weight_decay": 1e-5,
    "triplet_weight": 1.0,
    "margin": 0.2,
    "sampling": "distance_weighted",
    "distance_weight": 0.0,
    "angle_weight": 0.0,
    "max_train_items": None,
    "max_eval_items": None,
}
# The student: ResNet18, 128-d, *without* L2 normalization, trained by RKD-DA
# alone (λ_D = 1, λ_A = 2, no triplet loss), from random weights.
_PAPER_STUDENT = {
    **_PAPER_TEACHER,
    "backbone": "resnet18",
    "embedding_dim": 128,
    "l2_normalize": False,
    "weights": None,
    "epochs": 80,
    "learning_rate": 1e-4,
    "lr_decay_epochs": [40, 60],
    "lr_decay_factor": 0.1,
    "triplet_weight": 0.0,
    "distance_weight": 1.0,
    "angle_weight": 2.0,
}

PRESETS = {
    "cub200": {
        "description": "CUB-200-2011, classes 0–99 train, 100–199 test: the paper's metric-learning recipe.",
        "teacher": {**_PAPER_TEACHER, "dataset": "cub200"},
        "student": {**_PAPER_STUDENT, "dataset": "cub200"},
    },
    "cars196": {
        "description": "Cars196, classes 0–97 train, 98–195 test: the paper's metric-learning recipe.",
        "teacher": {**_PAPER_TEACHER, "dataset": "cars196"},
        "student": {**_PAPER_STUDENT, "dataset": "cars196"},
    },
    "sop": {
        "description": "Stanford Online Products, Ebay_train / Ebay_test: the recipe with the student's longer schedule.",
        "teacher": {**_PAPER_TEACHER, "dataset": "sop"},
        "student": {
            **_PAPER_STUDENT,
            "dataset": "sop",
            "epochs": 120,
            "steps_per_epoch": 500,
            "lr_decay_epochs": [40, 80],
        },
    },
}

# The offline demo (`rkd-keras demo`) on Fashion-MNIST, classes 0–4 train and
# 5–9 test; its teacher and student are also the defaults of `train-teacher`
# and `distill`. The teacher: a CNN of 304k parameters, 128-d, L2-normalized,
# triplet loss; the student: 32-d, not normalized, 15.7× smaller, RKD-DA.
_DEMO_TEACHER = {
    "dataset": "fashion_mnist",
    "image_size": 28,
    "resize_size": None,
    "augment": False,
    "channels": 1,
    "backbone": "small_cnn",
    "width": 32,
    "embedding_dim": 128,
    "l2_normalize": True,
    "weights": None,
    "epochs": 6,
    "steps_per_epoch": 80,
    "classes_per_batch": 5,
    "samples_per_class": 12,
    "learning_rate": 3e-3,
    "lr_decay_epochs": [],
    "lr_decay_factor": 0.1,
    "weight_decay": 0.0,
    "triplet_weight": 1.0,
    "margin": 0.2,
    "sampling": "distance_weighted",
    "distance_weight": 0.0,
    "angle_weight": 0.0,
    "max_train_items": 20_000,
    "max_eval_items": 4_000,
}
DEMO = {
    "description": "Fashion-MNIST, classes 0–4 train, 5–9 test: small CNNs that train on 2 CPU cores.",
    "teacher": _DEMO_TEACHER,
    "student": {
        **_DEMO_TEACHER,
        "width": 8,
        "embedding_dim": 32,
        "l2_normalize": False,
        "triplet_weight": 0.0,
        "distance_weight": 1.0,
        "angle_weight": 2.0,
    },
    # The demo's students: the same student trained by the triplet loss alone
    # (the baseline), or from the teacher by RKD-D, RKD-A or both.
    "students": {
        "triplet": {"triplet_weight": 1.0, "distance_weight": 0.0, "angle_weight": 0.0},
        "rkd_d": {"distance_weight": 1.0, "angle_weight": 0.0},
        "rkd_a": {"distance_weight": 0.0, "angle_weight": 2.0},
        "rkd_da": {"distance_weight": 1.0, "angle_weight": 2.0},
    },
    # `rkd-keras demo --quick`: every step of the demo, a few batches each.
    "quick": {"epochs": 1, "steps_per_epoch": 4, "max_train_items": 1_000, "max_eval_items": 400},
}

ROLES = ("teacher", "student")


def get(name: str, role: str) -> dict:
    """A copy of the settings of `role` in preset `name` (or `"demo"`).

    Args:
        name: A key of `PRESETS`, or `"demo"`.
        role: `"teacher"` or `"student"`.

    Returns:
        A new dict of settings (see the table above); changing it changes
        nothing here.
    """
    presets = {**PRESETS, "demo": DEMO}
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(presets)}.")
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.")
    return copy.deepcopy(presets[name][role])
