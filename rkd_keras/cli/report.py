"""Tables and pictures of runs and comparisons: what a person reads instead of logs."""

import math

import numpy as np

from rkd_keras.choices import CLASSIFICATION_CLASSES, DATASET_CLASSES

KS = (1, 2, 4, 8)
# Result key → (column header, factor shown, unit). Recall, MAP@R and accuracy
# are shown in percent; the cross-entropy in nats.
COLUMNS = {
    **{f"recall_at_{k}": (f"R@{k}", 100, "%") for k in KS},
    "map_at_r": ("MAP@R", 100, "%"),
    "accuracy": ("top-1", 100, "%"),
    "cross_entropy": ("CE", 1, "nats"),
}
# The validation score each task's runs are selected on, as in their history.csv.
VALIDATION = {"metric": "val_recall_at_1", "classification": "val_accuracy"}


def _shown(metrics):
    """The result keys a table shows for these results, in COLUMNS's order."""
    return [key for key in COLUMNS if key in metrics]


def print_table(results):
    """Prints each model's parameters and test metrics (Recall@K and MAP@R, or accuracy), one row per model."""
    keys = _shown(next(iter(results.values())))
    print(f"\n{'model':<18} {'params':>10} " + " ".join(f"{COLUMNS[key][0]:>6}" for key in keys))
    for name, metrics in results.items():
        values = " ".join(f"{COLUMNS[key][1] * metrics[key]:6.2f}" for key in keys)
        print(f"{name:<18} {metrics['params']:>10,} {values}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(path, results, histories):
    """Test metrics per model (bars) beside the validation score and training loss per epoch (curves)."""
    plt = _pyplot()
    figure, (bars, score, loss) = plt.subplots(1, 3, figsize=(16, 4.5))
    # The headline scores: Recall@K, or accuracy (MAP@R's scale would hide the bars).
    keys = [key for key in _shown(next(iter(results.values()))) if key.startswith("recall_at_") or key == "accuracy"]
    width = 0.8 / len(results)
    for i, (name, metrics) in enumerate(results.items()):
        bars.bar(np.arange(len(keys)) + i * width, [100 * metrics[key] for key in keys], width, label=name)
    bars.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [COLUMNS[key][0] for key in keys])
    low = min(100 * metrics[keys[0]] for metrics in results.values())
    bars.set_ylim(max(0, low - 10), 100)
    bars.set_title("Test split (%)" if "accuracy" in keys else "Recall@K on the unseen test classes (%)")
    bars.legend(fontsize=8)
    for name, history in histories.items():
        epochs = np.arange(1, len(history["loss"]) + 1)
        for monitor in VALIDATION.values():
            if monitor in history:
                score.plot(epochs, 100 * np.asarray(history[monitor]), marker="o", label=name)
        loss.plot(epochs, history["loss"], marker="o", label=name)
    score.set(title="Validation score (%, held-out training images)", xlabel="epoch")
    loss.set(title="Training loss", xlabel="epoch", yscale="log")
    for axes in (score, loss):
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def summarize(per_seed: dict, keys) -> dict:
    """`{model: {key: {"mean", "sd", "n"}}}` over seeds; sd is the sample standard deviation (None for one seed).

    Args:
        per_seed: `{model: {seed: metrics}}`.
        keys: The result keys to summarize.
    """
    summary = {}
    for name, by_seed in per_seed.items():
        summary[name] = {}
        for key in keys:
            values = np.array([metrics[key] for metrics in by_seed.values()], np.float64)
            sd = float(values.std(ddof=1)) if len(values) > 1 else None
            summary[name][key] = {"mean": float(values.mean()), "sd": sd, "n": int(len(values))}
    return summary


def _cell(key, stats):
    factor = COLUMNS[key][1]
    digits = 1 if factor == 100 else 3
    mean = f"{factor * stats['mean']:.{digits}f}"
    return mean if stats["sd"] is None else f"{mean} ± {factor * stats['sd']:.{digits}f}"


def _labels(labels):
    """Class labels as a person reads them: `5–9` for a run of consecutive labels, else `1, 3, 5`."""
    labels = sorted(labels)
    if len(labels) > 2 and labels == list(range(labels[0], labels[-1] + 1)):
        return f"{labels[0]}–{labels[-1]}"
    return ", ".join(map(str, labels))


def measured_split(config, items: int) -> tuple:
    """What a comparison's runs were tested on, from their settings (a `RunConfig`): the data, not the preset.

    Args:
        config: The settings of a run (every run of a comparison has the same data settings).
        items: The number of test images its evaluation used (`max_eval_items` may cap it).

    Returns:
        `({"train_classes", "test_classes", "test_items"}, sentence)`: for metrics.json, and for table.md.
    """
    if config.task == "classification":
        classes = list(range(CLASSIFICATION_CLASSES[config.dataset]))
        split = {"train_classes": classes, "test_classes": classes, "test_items": items}
        return split, (
            f"{config.dataset}, all {len(classes)} classes: top-1 accuracy and cross-entropy on {items:,} test images."
        )
    train, test = DATASET_CLASSES[config.dataset]
    split = {
        "train_classes": config.train_classes or list(range(train)),
        "test_classes": config.test_classes() or list(range(train, train + test)),
        "test_items": items,
    }
    return split, (
        f"{config.dataset}, classes {_labels(split['train_classes'])} train, {_labels(split['test_classes'])} test: "
        f"Recall@K and MAP@R on {items:,} test images of the classes unseen in training."
    )


def comparison_table(title, lines, per_seed, summary, keys, descriptions, params) -> str:
    """The Markdown of `table.md`: mean ± sd over seeds for every model and metric, then every seed's numbers.

    Args:
        title: The heading (the command that made it).
        lines: Sentences under the heading (data, seeds, selection).
        per_seed: `{model: {seed: metrics}}`, the teacher first.
        summary: `summarize(per_seed, keys)`.
        keys: The result keys, columns in this order.
        descriptions: `{model: what it trains with}`.
        params: `{model: parameter count}`.
    """
    headers = [f"{COLUMNS[key][0]} ({COLUMNS[key][2]})" for key in keys]
    seeds = sorted({seed for by_seed in per_seed.values() for seed in by_seed})
    out = [f"# {title}", "", *lines, "", f"## Mean ± sd over {len(seeds)} seed{'s' * (len(seeds) > 1)}", ""]
    out += ["| model | params | " + " | ".join(headers) + " | trained with |", "|---|---:|" + "---:|" * len(keys) + "---|"]
    for name in per_seed:
        cells = " | ".join(_cell(key, summary[name][key]) for key in keys)
        out.append(f"| {name} | {params[name]:,} | {cells} | {descriptions[name]} |")
    out += ["", "## Per seed", "", "| model | " + " | ".join(f"seed {seed}" for seed in seeds) + " |"]
    out.append("|---|" + "---|" * len(seeds))
    for name, by_seed in per_seed.items():
        cells = [
            " / ".join(f"{COLUMNS[key][1] * by_seed[seed][key]:.{1 if COLUMNS[key][1] == 100 else 3}f}" for key in keys)
            if seed in by_seed else "" for seed in seeds
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "Per seed: " + " / ".join(COLUMNS[key][0] for key in keys) + "."]
    return "\n".join(out) + "\n"


def plot_comparison(path, summary, keys, curves, task):
    """One panel per metric (mean over seeds, sd as error bars, the teacher dashed) and the students' validation curves.

    Args:
        path: The PNG to write.
        summary: `summarize(...)`, the teacher first.
        keys: The result keys, one panel each.
        curves: `{model: [validation score per epoch, one list per seed]}`.
        task: `"metric"` or `"classification"`, for the titles.
    """
    plt = _pyplot()
    panels = len(keys) + 1
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    axes = axes.ravel()
    names = list(summary)
    students = [name for name in names if name != "teacher"]
    colours = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}
    for ax, key in zip(axes, keys):
        header, factor, unit = COLUMNS[key]
        teacher = [factor * summary["teacher"][key]["mean"]] if "teacher" in summary else []
        means = np.array([factor * summary[name][key]["mean"] for name in students])
        sds = np.array([factor * (summary[name][key]["sd"] or 0.0) for name in students])
        ax.bar(np.arange(len(students)), means, yerr=sds, capsize=3, color=[colours[name] for name in students])
        if teacher:
            ax.axhline(teacher[0], color="black", linestyle="--", linewidth=1, label="teacher")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(np.arange(len(students)), students, rotation=45, ha="right", fontsize=8)
        spread = np.concatenate([means - sds, means + sds, teacher])
        margin = max(0.15 * (spread.max() - spread.min()), 0.005 * abs(spread.max()))
        ax.set_ylim(spread.min() - margin, spread.max() + margin)
        lower = "lower is better" if key == "cross_entropy" else "higher is better"
        ax.set_title(f"{header} ({unit}; mean ± sd over seeds, {lower})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    curve_axes = axes[len(keys)]
    for name in students:
        runs = curves.get(name, [])
        length = min((len(run) for run in runs), default=0)
        if length:
            mean = 100 * np.mean([run[:length] for run in runs], axis=0)
            curve_axes.plot(np.arange(1, length + 1), mean, marker="o", markersize=3, color=colours[name], label=name)
    what = "Recall@1" if task == "metric" else "accuracy"
    curve_axes.set(title=f"Students' validation {what} (%, mean over seeds)", xlabel="epoch")
    curve_axes.legend(fontsize=7, ncol=2)
    curve_axes.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_embedding_map(path, embeddings, labels, class_names=None, max_points=2_000, seed=0):
    """t-SNE maps of several models' embeddings of the same items, side by side, a legend on each.

    t-SNE keeps each point's near neighbours near, which is what Recall@K
    measures (a linear projection of a 128-d embedding shows one overlapping
    cloud). It costs O(N log N) per iteration, so at most `max_points` items,
    drawn at random with `seed`, are mapped; the title says how many.
    """
    from sklearn.manifold import TSNE

    plt = _pyplot()
    labels = np.asarray(labels)
    chosen = np.arange(len(labels))
    if len(labels) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(len(labels), max_points, replace=False))
    classes = np.unique(labels[chosen])
    figure, axes = plt.subplots(1, len(embeddings), figsize=(6 * len(embeddings), 5.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], embeddings.items()):
        points = TSNE(2, init="pca", perplexity=min(30.0, len(chosen) - 1), random_state=seed).fit_transform(
            np.asarray(values, np.float64)[chosen]
        )
        for c in classes:
            members = labels[chosen] == c
            label = class_names[c] if class_names is not None else str(c)
            ax.scatter(points[members, 0], points[members, 1], s=4, alpha=0.6, label=label)
        shown = f"{len(chosen):,} of {len(labels):,}" if len(chosen) < len(labels) else f"{len(labels):,}"
        ax.set_title(f"{name}: t-SNE of {shown} test images")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=4, fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
