"""The paper's recipes and the demo's settings, as plain data.

Like keras-hub's `*_presets.py`: dictionaries that the command line
(`rkd-keras train-teacher --preset cub200`), the examples and API users read.
Their keys are the command line's run settings (`rkd-keras train-teacher
--help` explains each), which map onto the API:

| key | API |
|---|---|
| `dataset`, `image_size`, `resize_size`, `augment`, `channels` | `load_dataset(...)` |
| `backbone`, `embedding_dim`, `l2_normalize`, `weights`, `width` | `embedding_model(...)`: `rkd_keras.recipes.network` |
| `classes_per_batch`, `samples_per_class`, `steps_per_epoch` | `pk_batches(P, K, num_batches=...)` |
| `learning_rate`, `weight_decay`, `lr_decay_epochs`, `lr_decay_factor` | Adam and a step decay of its rate: `rkd_keras.recipes.optimizer` |
| `margin`, `sampling`, `triplet_weight` | `TripletLoss(...)` and its weight |
| `distance_weight`, `angle_weight` | `Distiller(distance_weight=..., angle_weight=...)` |
| `task`, `train_classes` | `load_dataset(task=..., classes=...)`; classification builds `classifier_model(...)` |
| `terms` | `Distiller(terms=rkd_keras.terms.build_terms(...))`: a list of term specs (see `term`) |

Beside the metric-learning recipes (`PRESETS`) and the demo (`DEMO`):
`CLASSIFICATION_RECIPE`, the paper's classification recipe as terms, and
`COMPARE`, the methods that `rkd-keras compare` trains side by side, each a
description, its terms with their weights and layers, and whether its
student has the teacher's architecture.

Data only: no TensorFlow is imported here, and nothing is built. The rules a
term spec obeys are `rkd_keras.checks.check_term_specs`; the objects a recipe
names are built by `rkd_keras.recipes` and `rkd_keras.terms.build_terms`.

Example:
>>> from rkd_keras import presets
>>> recipe = presets.get("cub200", "student")
>>> recipe["backbone"], recipe["embedding_dim"], recipe["angle_weight"]
('resnet18', 128, 2.0)
"""

import copy

from rkd_keras import checks

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


def term(
    loss: str, weight: float = 1.0, layer: str | None = None, *, name: str | None = None, warmup_epochs: int = 0,
    **options,
) -> dict:
    """A term as data: `weight · loss(teacher tensor, student tensor)` on `layer` of both models.

    `layer=None` reads the models' outputs. Teacher and student built by
    `embedding_model` or `classifier_model` share layer names (`pool`,
    `stage1`, ...), so one name selects both. `options` are the loss
    wrapper's arguments (e.g. `l2_normalize=True`, `temperature=4.0`).
    `warmup_epochs > 0` ramps the weight up, `weight · min(epoch /
    warmup_epochs, 1)` (`rkd_keras.TermWarmup`); the key is written only then.

    Example:
    >>> term("rkd_angle", 50.0, "pool", l2_normalize=True)["options"]
    {'l2_normalize': True}
    >>> term("dkd", warmup_epochs=20)["warmup_epochs"]
    20
    """
    spec = {
        "loss": loss, "weight": float(weight), "teacher_layer": layer, "student_layer": layer,
        "name": name or (loss if layer is None else f"{loss}_{layer}"), "options": options,
    }
    return {**spec, "warmup_epochs": warmup_epochs} if warmup_epochs else spec


# Kept from 0.2.0, where the spec code lived here: presets hold data; the rules are `rkd_keras.checks`', the
# objects `rkd_keras.terms`'.
check_terms = checks.check_term_specs


def build_terms(specs) -> list:
    """`rkd_keras.terms.build_terms(specs)` (kept from 0.2.0)."""
    from rkd_keras.terms import build_terms

    return build_terms(specs)


# The paper's classification recipe (Park et al. §4.2: RKD on the last pooling
# layer with cross-entropy; its best setting HKD + RKD-DA) as the official
# `classification` branch writes it (lenscloth/RKD, `run_distill_classification.py`
# with `metric/loss_classification.py`): cross-entropy (weight 1); KD at T = 4
# with `kd_ratio = 16`, which is T² — `hinton_kd` already multiplies by T², so
# its weight is 1; `DistillRelativeDistanceV2` (= RKD-D) with `dist_ratio = 25`
# and `DistillAngle` (= RKD-A) with `angle_ratio = 50`, both on
# `F.normalize`d penultimate features: `pool` with `l2_normalize=True`.
CLASSIFICATION_RECIPE = {
    "description": "cross-entropy + Hinton's KD (T = 4) on the logits + RKD-D (25) and RKD-A (50) on the "
    "L2-normalised pooled features: the official classification branch of lenscloth/RKD",
    "terms": [
        term("hinton_kd", 1.0, temperature=4.0),
        term("rkd_distance", 25.0, "pool", l2_normalize=True),
        term("rkd_angle", 50.0, "pool", l2_normalize=True),
    ],
}


def _method(description, terms=(), *, triplet_weight=0.0, prototypical_weight=0.0, architecture="student"):
    """A compare method. `architecture`: the student's network (`"student"`), the teacher's (`"teacher"`), or the
    student's network with the teacher's embedding width and normalisation (`"teacher_width"`)."""
    return {
        "description": description, "terms": list(terms), "triplet_weight": triplet_weight,
        "prototypical_weight": prototypical_weight, "architecture": architecture,
    }


# `rkd-keras compare`: every method's student trains from the same teacher (one
# per seed). Our losses are ports of the reference files named in the README
# (Distillation losses), so the weights those files' scripts use carry over;
# where no source gives one, the comment says it was chosen here.
#
# Metric learning: the demo's teacher and student (Fashion-MNIST classes 0–4
# train, 5–9 test). As the official `run_distill.py` (its `triplet_ratio`
# defaults to 0), the distilled students train without the triplet loss,
# except Attention (below). Relational losses read the embedding, as RKD does.
_METRIC_RKD_D = term("rkd_distance", 1.0)  # examples/cub200.sh: --dist_ratio 1
_METRIC_RKD_A = term("rkd_angle", 2.0)  # examples/cub200.sh: --angle_ratio 2
_METRIC_METHODS = {
    "triplet": _method("triplet loss alone, no teacher (the baseline student)", triplet_weight=1.0),
    "rkd_d": _method("RKD-D on the embeddings", [_METRIC_RKD_D]),
    "rkd_a": _method("RKD-A on the embeddings", [_METRIC_RKD_A]),
    "rkd_da": _method("RKD-D + RKD-A on the embeddings (the paper's student)", [_METRIC_RKD_D, _METRIC_RKD_A]),
    # HardDarkRank's own defaults α = 3, β = 3, list of 4 (lenscloth/RKD metric/loss.py);
    # run_distill.py leaves dark_ratio at 0, so the weight 1 is chosen here.
    "dark_rank": _method("DarkRank on the embeddings", [term("dark_rank", 1.0)]),
    # lenscloth/RKD run_distill.py puts attention on the stages after the first
    # (b2–b4 of ResNet's four; here stage2–stage3 of small_cnn's three) and gives
    # no weight: β = 1000 per stage is RepDistiller's (train_student.py -b 1000,
    # the same loss). Attention maps do not reach the embedding layer, so the
    # triplet loss (weight 1) trains it: chosen here.
    "attention": _method(
        "attention transfer on stage2 and stage3 + the triplet loss",
        [term("attention_transfer", 1000.0, "stage2"), term("attention_transfer", 1000.0, "stage3")],
        triplet_weight=1.0,
    ),
    # lenscloth/RKD run_distill_fitnet.py: hints (weight 1, --fitnet_ratio) on the
    # stages after the first and on the embedding, each through a regressor, alone.
    "fitnet": _method(
        "FitNet hints on stage2, stage3 and the embedding",
        [term("fitnet", 1.0, "stage2"), term("fitnet", 1.0, "stage3"), term("fitnet", 1.0)],
    ),
    # RepDistiller scripts/run_cifar_distill.sh weights (-b 3000, -b 30000) and
    # torchdistill's CCKD sample config (weight 0.003); on the embedding, alone,
    # where Adam makes a single loss's weight nearly irrelevant.
    "sp": _method("similarity-preserving KD on the embeddings", [term("similarity_preserving", 3000.0)]),
    "pkt": _method("probabilistic knowledge transfer on the embeddings", [term("pkt", 30000.0)]),
    "cc": _method("correlation congruence on the embeddings", [term("correlation_congruence", 0.003)]),
    # examples/cub200.sh "Self-Distillation": RKD-DA into the teacher's architecture, no L2 normalization.
    "self_distillation": _method(
        "RKD-D + RKD-A into a student of the teacher's architecture (not L2-normalised)",
        [_METRIC_RKD_D, _METRIC_RKD_A],
        architecture="teacher",
    ),
    # tjddus9597/LabelRelaxation-CVPR21: train_target.py trains the student with
    # Relaxed_Contra alone (weight 1) at its defaults σ = 1, δ = 1, as every command
    # of its README; on the embedding, as RKD.
    "relaxed_contrastive": _method("relaxed contrastive loss on the embeddings", [term("relaxed_contrastive", 1.0)]),
    # The teacher-indexed gallery (issue 23): students of the demo student's
    # network with the teacher's embedding (128-d, L2-normalised), so their
    # queries can be ranked against the teacher's gallery. The absolute term is
    # FitNet on the embedding without a regressor (a plain MSE, as the
    # asymmetric-retrieval papers' regression to the teacher's embedding); its
    # weight 128, the width, makes it each example's squared distance ‖s − t‖²
    # (the mean over 128 elements times 128): chosen here, so that alone and
    # beside RKD-DA it is the same term.
    "rkd_da_wide": _method(
        "RKD-D + RKD-A into a student of the teacher's embedding width (the RKD row of the asymmetric protocol)",
        [_METRIC_RKD_D, _METRIC_RKD_A],
        architecture="teacher_width",
    ),
    "mse": _method(
        "absolute term: MSE to the teacher's embedding (no regressor), student of the teacher's width",
        [term("fitnet", 128.0, name="mse", regressor=False)],
        architecture="teacher_width",
    ),
    "mse_rkd_da": _method(
        "the absolute term (as mse) + RKD-D + RKD-A, student of the teacher's width",
        [term("fitnet", 128.0, name="mse", regressor=False), _METRIC_RKD_D, _METRIC_RKD_A],
        architecture="teacher_width",
    ),
}

# Classification: every student trains with cross-entropy (weight 1), as in
# the paper's table and the sources below; the teacher with cross-entropy alone.
_CLASSIFICATION_HKD, _CLASSIFICATION_RKD_D, _CLASSIFICATION_RKD_A = CLASSIFICATION_RECIPE["terms"]
_CLASSIFICATION_METHODS = {
    "ce": _method("cross-entropy alone, no teacher (the baseline student)"),
    "hkd": _method("Hinton's KD on the logits, T = 4", [_CLASSIFICATION_HKD]),
    "rkd_da": _method("RKD-D + RKD-A on the L2-normalised pooled features", [_CLASSIFICATION_RKD_D, _CLASSIFICATION_RKD_A]),
    "hkd_rkd_da": _method("HKD + RKD-DA: the paper's best setting (CLASSIFICATION_RECIPE)", CLASSIFICATION_RECIPE["terms"]),
    # RepDistiller train_student.py --distill hint: hint_layer 2 (the second
    # stage's output), -b 100, MSE through a regressor.
    "fitnet": _method("FitNet hint on stage2", [term("fitnet", 100.0, "stage2")]),
    # RepDistiller --distill attention -b 1000 on every stage's output (feat[1:-1]).
    "attention": _method(
        "attention transfer on stage1, stage2 and stage3",
        [term("attention_transfer", 1000.0, f"stage{i}") for i in (1, 2, 3)],
    ),
    # RepDistiller --distill similarity -b 3000 on the last stage's feature map (feat[-2]).
    "sp": _method("similarity-preserving KD on stage3", [term("similarity_preserving", 3000.0, "stage3")]),
    # RepDistiller --distill pkt -b 30000 on the pooled features (feat[-1]).
    "pkt": _method("probabilistic knowledge transfer on the pooled features", [term("pkt", 30000.0, "pool")]),
    # torchdistill configs/sample/ilsvrc2012/cckd: weight 0.003, γ = 0.4, order 2,
    # on a learned 128-d projection of the pooled features there; here on the
    # pooled features themselves (RepDistiller's CC is another formula, so its
    # weight does not carry over).
    "cc": _method("correlation congruence on the pooled features", [term("correlation_congruence", 0.003, "pool")]),
    # hunto's DIST with its class defaults β = γ = τ = 1 and loss weight 1 (its
    # ImageNet setting); no CIFAR setting was found in the sources read: chosen here.
    "dist": _method("DIST on the logits", [term("dist_kd", 1.0)]),
    # megvii-research/mdistiller configs/cifar100/dkd/*.yaml and cfg.py: CE weight 1,
    # α = 1, β = 8, T = 4, the weight ramped up by min(epoch / 20, 1) (`WARMUP: 20`).
    # The reference trains 240 epochs; at this comparison's few epochs the ramp
    # never ends, which is the reference's schedule, not a choice made here.
    "dkd": _method("DKD on the logits (α 1, β 8, T 4), warm-up over 20 epochs", [term("dkd", 1.0, warmup_epochs=20)]),
    # sunshangquan/logit-standardization-KD: KD with logit standardization at the
    # authors' temperature 2 and KD weight 9 (their README's CIFAR-100 KD commands,
    # `--logit-stand --base-temp 2 --kd-weight 9`). Their cross-entropy weight is
    # not carried over: every student here trains with cross-entropy at weight 1.
    "kd_ls": _method(
        "Hinton's KD on standardized logits (T = 2, weight 9)", [term("hinton_kd", 9.0, temperature=2.0, standardize=True)]
    ),
}

_CLASSIFICATION_TEACHER = {
    **_DEMO_TEACHER,
    "task": "classification",
    "resize_size": None,
    # Every class in each batch, 6 images each: batches of 60 as the demo's, reproducible and resumable.
    "classes_per_batch": 10,
    "samples_per_class": 6,
    "triplet_weight": 0.0,
    "max_train_items": None,
    "max_eval_items": None,
}
_COMPARE_QUICK = {"epochs": 1, "steps_per_epoch": 4, "max_train_items": 1_000, "max_eval_items": 400}


def few_shot_key(ways: int, shots: int) -> str:
    """The result key of `ways`-way `shots`-shot accuracy in a run's metrics, e.g. `few_shot_5way_1shot`."""
    return f"few_shot_{ways}way_{shots}shot"


# Few-shot (Park et al. §4.3, on Snell et al. 2017's prototypical networks): a
# prototypical network distilled into its own architecture, the prototypical
# loss always added, RKD-D + RKD-A divided by 2 when combined. The paper's λ
# for this task could not be read here: the metric recipe's λ_D = 1, λ_A = 2
# (halved together: 0.5 and 1) are used, chosen here.
_FEW_SHOT_METHODS = {
    "proto": _method(
        "prototypical loss alone, no teacher (the baseline student)", prototypical_weight=1.0, architecture="teacher",
    ),
    "proto_rkd_d": _method(
        "prototypical loss + RKD-D on the embeddings", [_METRIC_RKD_D], prototypical_weight=1.0, architecture="teacher",
    ),
    "proto_rkd_da": _method(
        "prototypical loss + (RKD-D + RKD-A) / 2 on the embeddings",
        [term("rkd_distance", _METRIC_RKD_D["weight"] / 2), term("rkd_angle", _METRIC_RKD_A["weight"] / 2)],
        prototypical_weight=1.0, architecture="teacher",
    ),
}
# The teacher: the demo teacher's network (small_cnn, 128-d) as a prototypical
# network, not L2-normalised (Snell et al. rank squared Euclidean distances of
# the raw embedding), trained on glyphs' classes 0–199 (many classes, as
# Omniglot's characters). Its P×K batches are episodes of 20 ways, 5 support
# and 5 query images each (Snell et al. train Omniglot on 60 ways with 5
# queries, at the test's shots; one network serves both shots here, and 20
# ways keep a batch at 200 images on a CPU): chosen here.
# On the unseen classes, as Omniglot's table (Snell et al.): 5- and 20-way, 1- and 5-shot, 15 queries per
# class (glyphs has 20 images a class: 5 shots + 15 queries), 1,000 episodes, drawn with each run's seed.
_FEW_SHOT_EVALUATION = {"settings": ((5, 1), (5, 5), (20, 1), (20, 5)), "queries": 15, "episodes": 1_000}
_FEW_SHOT_TEACHER = {
    **_DEMO_TEACHER,
    "task": "metric",
    "dataset": "glyphs",
    "l2_normalize": False,
    "classes_per_batch": 20,
    "samples_per_class": 10,
    "shots": 5,
    "triplet_weight": 0.0,
    "prototypical_weight": 1.0,
    "max_train_items": None,
    "max_eval_items": None,
}
COMPARE = {
    "metric": {
        "teacher": {**_DEMO_TEACHER, "task": "metric"},
        "student": {**DEMO["student"], "task": "metric", "distance_weight": 0.0, "angle_weight": 0.0},
        "metrics": ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r"),
        "methods": _METRIC_METHODS,
        "quick": _COMPARE_QUICK,
    },
    "classification": {
        "teacher": _CLASSIFICATION_TEACHER,
        "student": {**_CLASSIFICATION_TEACHER, "width": 8},
        "metrics": ("accuracy", "cross_entropy"),
        "methods": _CLASSIFICATION_METHODS,
        "quick": _COMPARE_QUICK,
    },
    "few_shot": {
        "teacher": _FEW_SHOT_TEACHER,
        "student": _FEW_SHOT_TEACHER,
        "metrics": tuple(few_shot_key(ways, shots) for ways, shots in _FEW_SHOT_EVALUATION["settings"]),
        "methods": _FEW_SHOT_METHODS,
        "evaluation": _FEW_SHOT_EVALUATION,
        # Episodes need the test classes' every image: --quick keeps them, and draws fewer episodes.
        "quick": {**_COMPARE_QUICK, "max_eval_items": None},
        "quick_episodes": 50,
    },
}


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
