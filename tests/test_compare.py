"""`rkd-keras compare`: every method of both tasks, on tiny settings; resuming; the settings it refuses."""

import json
import math

import pytest

from conftest import listing
from rkd_keras import presets
from rkd_keras.cli import main
from rkd_keras.cli.config import ConfigError
from rkd_keras.cli.inputs import check_inputs
from rkd_keras.cli.parser import build_parser
from rkd_keras.terms import build_terms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# --quick, then smaller still: tiny images and networks, 2 steps, few evaluation images.
TINY = {"image_size": 12, "width": 2, "steps_per_epoch": 2, "max_train_items": 300, "max_eval_items": 40}


def _compare(tmp_path, task, *extra):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    argv = ["compare", "--task", task, "--quick", "--seeds", "1", "--config", str(config), "--quiet"]
    return main([*argv, "--runs-dir", str(tmp_path), *extra])


# What each task's comparison below was tested on: the runs' settings (TINY's 40 test images), as table.md
# and metrics.json must say; the metric runs train on the other half of the classes.
MEASURED = {
    "metric": (["--train-classes", "5", "6", "7", "8", "9"], [5, 6, 7, 8, 9], [0, 1, 2, 3, 4],
               "fashion_mnist, classes 5–9 train, 0–4 test: Recall@K and MAP@R on 40 test images"),
    "classification": ([], list(range(10)), list(range(10)),
                       "fashion_mnist, all 10 classes: top-1 accuracy and cross-entropy on 40 test images."),
}


@pytest.mark.slow  # every method trained on a quick budget: two minutes or more on 2 cores
@pytest.mark.parametrize("task", ["metric", "classification"])
def test_quick_compare_reports_every_method_with_finite_numbers_and_a_resume_retrains_nothing(task, tmp_path, capsys):
    methods = list(presets.COMPARE[task]["methods"])
    keys = presets.COMPARE[task]["metrics"]
    split, train_classes, test_classes, header = MEASURED[task]
    assert _compare(tmp_path, task, *split) == 0
    out = capsys.readouterr().out
    root = tmp_path / f"compare-{task}"
    # Each run says what it trains and where it is: the teacher, then every method.
    assert f"[seed 1/1] [1/{len(methods) + 1}] teacher" in out
    assert f"[seed 1/1] [{methods.index('rkd_da') + 2}/{len(methods) + 1}] rkd_da student, " in out
    metrics = json.loads((root / "metrics.json").read_text())
    # Rows that train nothing (issue 21); the last, of the teacher's width, for the teacher-indexed gallery.
    controls = ["raw_pixels", "untrained", "untrained_wide"] if task == "metric" else []
    assert list(metrics["models"]) == ["teacher", *methods, *controls] and metrics["seeds"] == [1]
    for name, model in metrics["models"].items():
        for key in keys:
            value = model["per_seed"]["1"][key]
            assert math.isfinite(value), (name, key)
            assert model["summary"][key] == {"mean": value, "sd": None, "n": 1}
    assert (metrics["dataset"], metrics["train_classes"], metrics["test_classes"], metrics["test_items"]) == (
        "fashion_mnist", train_classes, test_classes, 40
    )
    assert all(model["per_seed"]["1"]["items"] == 40 for model in metrics["models"].values())
    table = (root / "table.md").read_text()
    assert table.splitlines()[2].startswith(header), table.splitlines()[2]
    wide = {"teacher", "self_distillation", "rkd_da_wide", "mse", "mse_rkd_da", "untrained_wide"} if controls else set()
    for name in ["teacher", *methods, *controls]:
        # mean ± sd, per seed, and for the students of the teacher's width (and the teacher) the asymmetric protocol
        assert sum(line.startswith(f"| {name} |") for line in table.splitlines()) == 2 + (name in wide), name
    for name in wide - {"teacher"}:
        summary = metrics["models"][name]["summary"]
        assert all(0 <= summary[key]["mean"] <= 1 for key in ("asym_recall_at_1", "asym_map_at_r")), name
    if controls:
        assert metrics["models"]["raw_pixels"]["params"] == 0
        assert metrics["models"]["untrained"]["params"] == metrics["models"]["rkd_da"]["params"]
        assert "| raw_pixels | 0 |" in table and "control: the student's architecture, seeded, no training" in table
    assert (root / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    # Each run in its own folder; the teacher of a seed taught that seed's students.
    run = json.loads((root / "seed1" / "rkd_da" / "config.json").read_text())
    assert run["seed"] == 1 and [term["name"] for term in run["terms"]] == [
        term["name"] for term in presets.COMPARE[task]["methods"]["rkd_da"]["terms"]
    ]
    assert json.loads((root / "status.json").read_text())["status"] == "complete"
    if task == "classification":
        # DKD's warm-up: its first epoch trains (and logs as `loss`) at 1/20 of the term's weight.
        header, row = [line.split(",") for line in (root / "seed1" / "dkd" / "history.csv").read_text().splitlines()[:2]]
        epoch = dict(zip(header, map(float, row)))
        assert epoch["loss"] == pytest.approx(epoch["task_loss"] + epoch["dkd"] / 20, rel=1e-5)

    runs_before = listing(root / "seed1")
    assert _compare(tmp_path, task, *split) == 2  # a finished comparison is not overwritten
    assert "pass --resume" in capsys.readouterr().err
    assert _compare(tmp_path, task, *split, "--resume") == 0
    assert "finished earlier" in capsys.readouterr().out
    assert listing(root / "seed1") == runs_before  # nothing trained or written again
    assert json.loads((root / "metrics.json").read_text()) == metrics


def test_the_summary_is_the_mean_and_sample_standard_deviation_over_seeds():
    from rkd_keras.cli.report import comparison_table, summarize

    per_seed = {"teacher": {0: {"accuracy": 0.80}, 1: {"accuracy": 0.90}}, "ce": {0: {"accuracy": 0.70}, 1: {"accuracy": 0.74}}}
    summary = summarize(per_seed, ["accuracy"])
    assert summary["teacher"]["accuracy"] == pytest.approx({"mean": 0.85, "sd": 0.1 / 2**0.5, "n": 2})
    assert summary["ce"]["accuracy"]["sd"] == pytest.approx(0.04 / 2**0.5)  # |0.70 − 0.74| / √2
    table = comparison_table("t", [], per_seed, summary, ["accuracy"], {"teacher": "T", "ce": "C"}, {"teacher": 9, "ce": 1})
    assert "| teacher | 9 | 85.0 ± 7.1 | T |" in table
    assert "| ce | 70.0 | 74.0 |" in table


# Fake runs as the demo's: R@K near 85 % (where the old chart's axis began at 75), each model its own loss.
DEMO_RESULTS = {
    name: {**{f"recall_at_{k}": r1 + k / 100 for k in (1, 2, 4, 8)}, "map_at_r": 0.3, "params": 1}
    for name, r1 in (("teacher", 0.875), ("triplet", 0.843), ("rkd_da", 0.902))
}
DEMO_HISTORIES = {
    "teacher": {"loss": [0.2, 0.1], "val_recall_at_1": [0.8, 0.85]},
    "triplet": {"loss": [0.3, 0.2], "task_loss": [0.3, 0.2], "val_recall_at_1": [0.7, 0.8]},
    "rkd_da": {"loss": [9.0, 4.0], "rkd_distance": [3.0, 1.0], "rkd_angle": [3.0, 1.5], "val_recall_at_1": [0.8, 0.9]},
}


def _axes_read_at_a_glance(figure):
    """Every panel: a title, both axes labelled; the figure: a title. Returns the panels by title."""
    assert figure._suptitle is not None and figure._suptitle.get_text()
    for ax in figure.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
    return {ax.get_title(): ax for ax in figure.axes}


def test_the_demo_report_starts_recall_at_0_and_gives_each_loss_its_own_panel(tmp_path):
    from rkd_keras.cli.report import plot_report

    figure = plot_report(tmp_path / "report.png", DEMO_RESULTS, DEMO_HISTORIES, title="demo")
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    panels = _axes_read_at_a_glance(figure)
    assert figure._suptitle.get_text() == "demo"
    bars = panels["Test split: Recall@K on the unseen test classes"]
    score = panels["Validation Recall@1 per epoch (held-out training images)"]
    for ax in (bars, score):
        assert ax.get_ylim() == (0, 100) and ax.get_ylabel().endswith("(%)")
    # Each bar's height is its R@K in %, from 0, and is written on it.
    heights = sorted(round(patch.get_height(), 6) for patch in bars.patches)
    assert heights == sorted(round(100 * m[f"recall_at_{k}"], 6) for m in DEMO_RESULTS.values() for k in (1, 2, 4, 8))
    assert "91.2" in [text.get_text() for text in bars.texts]
    # One loss per panel: three panels of one curve each, the model in the title, the parts of its loss named.
    losses = {title: ax for title, ax in panels.items() if "training loss" in title}
    assert len(losses) == 3 and all(len(ax.lines) == 1 for ax in losses.values())
    assert list(losses["rkd_da: training loss\n(weighted rkd_distance + rkd_angle)"].lines[0].get_ydata()) == [9.0, 4.0]
    assert "teacher: training loss" in losses and len(score.lines) == 3
    low, high = score.get_xlim()
    assert [tick for tick in score.get_xticks() if low <= tick <= high] == [1, 2]  # whole epochs


def test_the_comparison_report_starts_every_axis_at_0_one_metric_per_panel(tmp_path):
    from rkd_keras.cli.report import plot_comparison, summarize

    per_seed = {name: {0: metrics, 1: {**metrics, "recall_at_1": metrics["recall_at_1"] - 0.01}} for name, metrics in DEMO_RESULTS.items()}
    keys = ["recall_at_1", "map_at_r"]
    curves = {"triplet": [[0.7, 0.8], [0.72, 0.82]], "rkd_da": [[0.8, 0.9], [0.8, 0.88]]}
    figure = plot_comparison(tmp_path / "report.png", summarize(per_seed, keys), keys, curves, "metric")
    panels = _axes_read_at_a_glance(figure)
    assert figure._suptitle.get_text() == "rkd-keras compare --task metric: test scores, mean ± sd over 2 seeds"
    recall = panels["R@1 (%; mean ± sd over seeds, higher is better)"]
    mapr = panels["MAP@R (%; mean ± sd over seeds, higher is better)"]
    curve = panels["Students' validation Recall@1 (%, mean over seeds)"]
    assert recall.get_ylim() == (0, 100) and recall.get_ylabel() == "test R@1 (%)"  # 1.15 × 91.2 is capped at 100
    assert mapr.get_ylim() == pytest.approx((0, 34.5)) and mapr.get_ylabel() == "test MAP@R (%)"  # 1.15 × 30
    assert curve.get_ylim() == (0, 100)
    assert [round(patch.get_height(), 6) for patch in recall.patches] == [84.8, 90.7]  # triplet, rkd_da: means over seeds


def test_the_header_names_classes_that_are_no_run_as_a_list():
    from rkd_keras.cli.config import RunConfig
    from rkd_keras.cli.report import measured_split

    split, sentence = measured_split(RunConfig(train_classes=[1, 3, 5, 7, 9]), 1_234)
    assert split == {"train_classes": [1, 3, 5, 7, 9], "test_classes": [0, 2, 4, 6, 8], "test_items": 1_234}
    assert sentence.startswith("fashion_mnist, classes 1, 3, 5, 7, 9 train, 0, 2, 4, 6, 8 test: ")
    assert "on 1,234 test images" in sentence


def _inputs(*argv):
    return check_inputs(build_parser().parse_args(["compare", *argv]))


def test_the_methods_since_rkd_are_their_authors_settings():
    configs = _inputs("--task", "classification", "--methods", "dkd", "kd_ls")["configs"][0]
    assert configs["dkd"].terms == [{"loss": "dkd", "weight": 1.0, "teacher_layer": None, "student_layer": None,
                                     "name": "dkd", "options": {}, "warmup_epochs": 20}]  # fmt: skip
    (kd_ls,) = configs["kd_ls"].terms
    assert (kd_ls["loss"], kd_ls["weight"], kd_ls["options"]) == ("hinton_kd", 9.0, {"temperature": 2.0, "standardize": True})
    (relaxed,) = _inputs("--methods", "relaxed_contrastive")["configs"][0]["relaxed_contrastive"].terms
    assert (relaxed["loss"], relaxed["weight"], relaxed["teacher_layer"], relaxed["options"]) == ("relaxed_contrastive", 1.0, None, {})
    (term,) = build_terms([kd_ls])
    assert term.loss.get_config()["standardize"] is True and not term.uses_labels
    (term,) = build_terms(configs["dkd"].terms)
    assert term.uses_labels and term.weight == 1.0


def test_each_method_is_its_preset_on_the_tasks_student():
    configs = _inputs("--task", "classification", "--seeds", "3")["configs"][3]
    recipe = presets.COMPARE["classification"]
    assert list(configs) == ["teacher", *recipe["methods"]]
    assert configs["teacher"].terms == [] and configs["teacher"].width == 32 and configs["ce"].width == 8
    names = [spec["name"] for spec in configs["hkd_rkd_da"].terms]
    assert names == ["hinton_kd", "rkd_distance_pool", "rkd_angle_pool"]
    assert [(spec["weight"], spec["options"]) for spec in configs["hkd_rkd_da"].terms] == [
        (1.0, {"temperature": 4.0}), (25.0, {"l2_normalize": True}), (50.0, {"l2_normalize": True}),
    ]
    assert all(config.seed == 3 and config.task == "classification" for config in configs.values())
    metric = _inputs("--methods", "self_distillation", "triplet", "--train-classes", "1", "3", "5", "7", "9")["configs"][0]
    teacher, student = metric["teacher"], metric["self_distillation"]
    assert (student.backbone, student.width, student.embedding_dim) == (teacher.backbone, teacher.width, teacher.embedding_dim)
    assert not student.l2_normalize and teacher.l2_normalize
    assert metric["triplet"].triplet_weight == 1.0 and metric["triplet"].terms == []
    assert teacher.train_classes == [1, 3, 5, 7, 9] and teacher.test_classes() == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "rkd_da", "hkd"], "unknown metric methods hkd; choose among triplet, rkd_d"),
        (["--train-classes", "0", "1", "12"], "train_classes [12] are not classes of fashion_mnist, whose labels are 0–9"),
        (["--train-classes", "0", "1", "1"], "train_classes lists [1] more than once"),
        (["--train-classes", "0", "1", "2"], "classes_per_batch must be <= 3, the classes of train_classes, received 5"),
        (["--train-classes", *map(str, range(9))], "must leave at least 2 classes on each side"),
        (["--task", "classification", "--train-classes", "0", "1"], "classification trains and tests on every class"),
        (["--seeds", "0", "0"], "--seeds lists [0] more than once"),
        (["--task", "few_shot", "--dataset", "fashion_mnist"],
         "compare --task few_shot draws 20-way episodes from the classes unseen in training, and fashion_mnist has 5 of them"),
        (["--task", "few_shot", "--methods", "rkd_da"], "unknown few_shot methods rkd_da; choose among proto, proto_rkd_d"),
    ],
    ids=["unknown method", "unknown class", "repeated class", "too few for P", "no test classes", "classification", "seeds",
         "few-shot classes", "few-shot method"],
)
def test_settings_that_cannot_compare_are_refused_before_anything_runs(argv, message):
    with pytest.raises(ConfigError) as error:
        _inputs(*argv)
    assert message in str(error.value)


def test_a_config_file_may_not_set_what_each_method_sets(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: fashion_mnist\nterms: []\nseed: 4\n")
    assert main(["compare", "--config", str(config), "--runs-dir", str(tmp_path)]) == 2
    assert "seed, terms are set by compare itself" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [config]


@pytest.mark.parametrize(
    "command, settings, message",
    [
        (["train-teacher"], "task: classification\ntriplet_weight: 0\n", "train-teacher is for metric learning (task: metric)"),
        (["tune", "--teacher", "t.keras"], "terms: [{loss: pkt}]\n", "tune searches distance_weight and angle_weight"),
        (["distill", "--teacher", "t.keras"], "terms: [{loss: pkt, weight: -1}]\n", "terms[0]: The weight of term 'pkt' must be a finite number >= 0"),
        (["distill", "--teacher", "t.keras"], "terms: [{loss: rkd}]\n", "terms[0]: Unknown loss 'rkd'; choose a distillation loss (rkd_distance, rkd_angle"),
        (["distill", "--teacher", "t.keras"], "terms: [{loss: pkt, layer: pool}]\n", "terms[0] has unknown keys layer"),
        (["distill", "--teacher", "t.keras"], "terms: [{loss: pkt}, {loss: pkt}]\n", "Two terms are named 'pkt'"),
        (["distill", "--teacher", "t.keras"], "terms: [{loss: dkd, warmup_epochs: -1}]\n",
         "terms[0] warmup_epochs must be an integer >= 0, received -1"),
        (["distill", "--teacher", "t.keras"], "terms: [{loss: pkt}]\nangle_weight: 2\n", "give terms or distance_weight/angle_weight, not both"),
    ],
    ids=["classification teacher", "tune with terms", "negative weight", "unknown loss", "unknown key", "same name",
         "negative warm-up", "both"],
)
def test_run_settings_that_cannot_train_are_refused_before_anything_loads(command, settings, message, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(settings)
    assert main([command[0], "--config", str(config), "--runs-dir", str(tmp_path), *command[1:]]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [config]


def test_terms_in_a_config_file_replace_the_default_rkd_terms(tmp_path):
    from rkd_keras.cli.config import resolve_config

    config = tmp_path / "c.yaml"
    config.write_text("terms: [{loss: rkd_angle, weight: 50, teacher_layer: pool, student_layer: pool, options: {l2_normalize: true}}]\n")
    student = resolve_config("student", config_file=config)
    assert (student.distance_weight, student.angle_weight) == (0.0, 0.0)  # the demo student's 1 and 2 are replaced
    assert student.terms == [{"loss": "rkd_angle", "weight": 50.0, "teacher_layer": "pool", "student_layer": "pool",
                              "name": "rkd_angle", "options": {"l2_normalize": True}}]  # fmt: skip
    (term,) = build_terms(student.terms)
    assert (term.weight, term.teacher_layer, term.loss.l2_normalize, term.relational) == (50.0, "pool", True, True)


def test_the_asymmetric_rows_are_students_of_the_teachers_embedding_with_the_absolute_term():
    configs = _inputs("--methods", "rkd_da", "rkd_da_wide", "mse", "mse_rkd_da")["configs"][0]
    teacher = configs["teacher"]
    for name in ("rkd_da_wide", "mse", "mse_rkd_da"):
        student = configs[name]
        # The demo student's network (width 8), the teacher's embedding: 128-d, L2-normalised.
        assert (student.backbone, student.width) == (configs["rkd_da"].backbone, 8), name
        assert (student.embedding_dim, student.l2_normalize) == (teacher.embedding_dim, teacher.l2_normalize) == (128, True)
    assert (configs["rkd_da"].embedding_dim, configs["rkd_da"].l2_normalize) == (32, False)
    assert [spec["name"] for spec in configs["mse_rkd_da"].terms] == ["mse", "rkd_distance", "rkd_angle"]
    assert configs["rkd_da_wide"].terms == configs["rkd_da"].terms
    (mse,) = build_terms(configs["mse"].terms)
    assert (mse.name, mse.weight, mse.uses_regressor, mse.relational) == ("mse", 128.0, False, False)


def test_the_asymmetric_table_reads_the_students_against_the_teachers_own_gallery():
    from rkd_keras.cli.report import asymmetric_summary, comparison_table, summarize

    def run(r1, mapr, asym=None):
        return {"recall_at_1": r1, "map_at_r": mapr, **({"asym_recall_at_1": asym[0], "asym_map_at_r": asym[1]} if asym else {})}

    per_seed = {
        "teacher": {0: run(0.80, 0.40), 1: run(0.84, 0.44)},
        "rkd_da": {0: run(0.90, 0.5), 1: run(0.92, 0.5)},  # not of the teacher's width: no asymmetric row
        "mse": {0: run(0.70, 0.3, (0.75, 0.35)), 1: run(0.72, 0.3, (0.79, 0.39))},
    }
    asymmetric = asymmetric_summary(per_seed)
    assert list(asymmetric) == ["teacher", "mse"]
    assert asymmetric["teacher"]["asym_recall_at_1"]["mean"] == pytest.approx(0.82)  # the teacher's own R@1
    assert asymmetric["mse"]["asym_recall_at_1"] == pytest.approx({"mean": 0.77, "sd": 0.04 / 2**0.5, "n": 2})
    keys = ["recall_at_1", "map_at_r"]
    names = {name: name for name in per_seed}
    table = comparison_table("t", [], per_seed, summarize(per_seed, keys), keys, names, dict.fromkeys(per_seed, 1))
    assert "## Teacher-indexed gallery (asymmetric protocol)" in table
    assert "| mse | 71.0 ± 1.4 | 77.0 ± 2.8 | 37.0 ± 2.8 |" in table
    assert "| teacher | 82.0 ± 2.8 | 82.0 ± 2.8 | 42.0 ± 2.8 |" in table
    assert sum(line.startswith("| rkd_da |") for line in table.splitlines()) == 2  # mean ± sd and per seed only
    assert "asymmetric" not in comparison_table("t", [], {"teacher": per_seed["teacher"]}, summarize(
        {"teacher": per_seed["teacher"]}, keys), keys, names, {"teacher": 1})


@pytest.mark.slow
def test_quick_compare_on_glyphs_tests_on_the_unseen_half_with_the_control_rows(tmp_path):
    assert _compare(tmp_path, "metric", "--dataset", "glyphs", "--methods", "rkd_da") == 0
    metrics = json.loads((tmp_path / "compare-metric" / "metrics.json").read_text())
    assert metrics["dataset"] == "glyphs" and list(metrics["models"]) == ["teacher", "rkd_da", "raw_pixels", "untrained"]
    assert metrics["train_classes"] == list(range(200)) and metrics["test_classes"] == list(range(200, 400))
    assert all(model["per_seed"]["1"]["items"] == 40 for model in metrics["models"].values())
    table = (tmp_path / "compare-metric" / "table.md").read_text()
    assert table.splitlines()[2].startswith("glyphs, classes 0–199 train, 200–399 test"), table


def test_quick_compare_ranks_a_wide_students_queries_against_its_teachers_gallery(tmp_path):
    """The asymmetric numbers of a compare run equal a brute-force NumPy oracle on the saved models (issue 23)."""
    import keras
    import numpy as np

    from rkd_keras.cli.config import RunConfig
    from rkd_keras.cli.training import data

    assert _compare(tmp_path, "metric", "--methods", "mse") == 0
    root = tmp_path / "compare-metric"
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics["models"]) == ["teacher", "mse", "raw_pixels", "untrained", "untrained_wide"]
    config = RunConfig(**json.loads((root / "seed1" / "mse" / "config.json").read_text()))
    images, labels = zip(*data(config, "test").as_numpy_iterator())
    images, labels = np.concatenate(images), np.concatenate(labels)
    queries, gallery = (
        keras.models.load_model(root / "seed1" / name / "best.keras").predict(images, verbose=0).astype(np.float64)
        for name in ("mse", "teacher")
    )
    distances = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)  # each query's own item is left out of the gallery
    recall_at_1 = np.mean(labels[np.argmin(distances, axis=1)] == labels)
    assert metrics["models"]["mse"]["per_seed"]["1"]["asym_recall_at_1"] == pytest.approx(recall_at_1, abs=1e-9)
    assert "asym_recall_at_1" not in metrics["models"]["teacher"]["per_seed"]["1"]
    assert metrics["asymmetric_metrics"] == ["asym_recall_at_1", "asym_map_at_r"]
    assert "| mse |" in (root / "table.md").read_text().split("## Teacher-indexed gallery")[1]


# The few-shot comparison (issue 21): glyphs' classes 0–199 train, episodes on 200–399. Tiny networks and few
# steps; every test image is kept (episodes need 20 of each class), --quick draws 50 episodes.
FEW_SHOT_TINY = {"image_size": 12, "width": 2, "embedding_dim": 16, "steps_per_epoch": 2, "max_train_items": 300}


@pytest.mark.slow  # ~40 s on an idle core: CI runs it with the slow end-to-end runs
def test_quick_few_shot_compare_gives_every_method_and_control_an_accuracy_in_0_1(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(FEW_SHOT_TINY))
    argv = ["compare", "--task", "few_shot", "--quick", "--seeds", "1", "--config", str(config), "--quiet"]
    assert main([*argv, "--runs-dir", str(tmp_path)]) == 0
    root = tmp_path / "compare-few_shot"
    metrics = json.loads((root / "metrics.json").read_text())
    methods = ["proto", "proto_rkd_d", "proto_rkd_da"]
    assert list(metrics["models"]) == ["teacher", *methods, "raw_pixels", "untrained"]
    assert (metrics["task"], metrics["dataset"], metrics["test_items"]) == ("few_shot", "glyphs", 4_000)
    assert metrics["train_classes"] == list(range(200)) and metrics["test_classes"] == list(range(200, 400))
    assert metrics["few_shot"] == {"settings": [[5, 1], [5, 5], [20, 1], [20, 5]], "queries": 15, "episodes": 50}
    keys = ["few_shot_5way_1shot", "few_shot_5way_5shot", "few_shot_20way_1shot", "few_shot_20way_5shot"]
    assert metrics["metrics"] == keys
    for name, model in metrics["models"].items():
        run = model["per_seed"]["1"]
        for key in keys:
            assert math.isfinite(run[key]) and 0 <= run[key] <= 1, (name, key)
            assert math.isfinite(run[key + "_half_width"]) and 0 <= run[key + "_half_width"] < 0.5, (name, key)
            assert model["summary"][key] == {"mean": run[key], "sd": None, "n": 1, "half_width": run[key + "_half_width"]}
    assert metrics["models"]["raw_pixels"]["params"] == 0
    assert metrics["models"]["untrained"]["params"] == metrics["models"]["proto_rkd_da"]["params"] == metrics["models"]["teacher"]["params"]
    table = (root / "table.md").read_text()
    lines = table.splitlines()
    assert lines[2].startswith("glyphs, classes 0–199 train, 200–399 test: few-shot accuracy (5-way 1-shot, "), lines[2]
    assert "## Mean ± 95 % half-width over episodes, 1 seed" in table
    assert "| model | params | 5-way 1-shot (%) | 5-way 5-shot (%) | 20-way 1-shot (%) | 20-way 5-shot (%) | trained with |" in table
    for name in metrics["models"]:
        row = next(line for line in lines if line.startswith(f"| {name} | "))  # the mean table's, before the per-seed one
        cells = row.split(" | ")[2:6]  # after the name and the parameters
        assert all(0 <= float(cell.split(" ± ")[0]) <= 100 for cell in cells), row
        assert sum(line.startswith(f"| {name} |") for line in lines) == 2, name  # mean table and per seed
    assert (root / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    run = json.loads((root / "seed1" / "proto_rkd_da" / "config.json").read_text())
    assert (run["prototypical_weight"], run["shots"], run["triplet_weight"], run["l2_normalize"]) == (1.0, 5, 0.0, False)
    assert [(term["name"], term["weight"]) for term in run["terms"]] == [("rkd_distance", 0.5), ("rkd_angle", 1.0)]


def test_few_shot_accuracy_of_separated_clusters_reaches_the_table_as_100():
    import numpy as np

    from rkd_keras.cli.report import comparison_table, summarize
    from rkd_keras.cli.training import few_shot_metrics

    # 20 classes of 20 points each, 0.01 around centres 10 apart: every query's nearest prototype is its own.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 20)
    embeddings = 10.0 * np.eye(20)[labels] + 0.01 * rng.standard_normal((400, 20))
    protocol = presets.COMPARE["few_shot"]["evaluation"] | {"episodes": 10}
    separated = few_shot_metrics(embeddings, labels, protocol, seed=0)
    assert separated == {key: value for key in presets.COMPARE["few_shot"]["metrics"]
                         for key, value in ((key, 1.0), (key + "_half_width", 0.0))}  # fmt: skip
    noise = few_shot_metrics(rng.standard_normal((400, 20)), labels, protocol, seed=0)
    assert abs(noise["few_shot_20way_5shot"] - 1 / 20) < 0.05  # chance, 1/ways
    keys = list(presets.COMPARE["few_shot"]["metrics"])
    per_seed = {"teacher": {0: separated}, "noise": {0: noise}}
    table = comparison_table("t", [], per_seed, summarize(per_seed, keys), keys, {"teacher": "T", "noise": "N"}, {"teacher": 1, "noise": 0})
    assert "| teacher | 1 | 100.0 ± 0.0 | 100.0 ± 0.0 | 100.0 ± 0.0 | 100.0 ± 0.0 | T |" in table
    assert "| teacher | 100.0 ± 0.0 / 100.0 ± 0.0 / 100.0 ± 0.0 / 100.0 ± 0.0 |" in table


def test_the_few_shot_students_are_prototypical_networks_of_the_teachers_architecture():
    configs = _inputs("--task", "few_shot")["configs"][0]
    teacher = configs["teacher"]
    assert (teacher.dataset, teacher.prototypical_weight, teacher.triplet_weight, teacher.terms) == ("glyphs", 1.0, 0.0, [])
    assert (teacher.classes_per_batch, teacher.samples_per_class, teacher.shots, teacher.l2_normalize) == (20, 10, 5, False)
    for name in ("proto", "proto_rkd_d", "proto_rkd_da"):
        student = configs[name]
        assert (student.backbone, student.width, student.embedding_dim, student.l2_normalize) == (
            teacher.backbone, teacher.width, teacher.embedding_dim, False
        ), name
        assert (student.prototypical_weight, student.shots) == (1.0, 5), name
    # RKD-D alone at λ_D = 1; combined, RKD-D + RKD-A divided by 2, as the paper's few-shot section.
    assert [(spec["loss"], spec["weight"]) for spec in configs["proto_rkd_d"].terms] == [("rkd_distance", 1.0)]
    assert [(spec["loss"], spec["weight"]) for spec in configs["proto_rkd_da"].terms] == [("rkd_distance", 0.5), ("rkd_angle", 1.0)]
    assert configs["proto"].terms == []


def test_a_few_shot_compare_keeps_every_test_image_for_its_episodes(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"max_eval_items": 400}))
    with pytest.raises(ConfigError) as error:
        _inputs("--task", "few_shot", "--config", str(config))
    assert "compare --task few_shot draws its episodes from every test image (20 of each class" in str(error.value)
    assert "leave max_eval_items out (received 400)" in str(error.value)
