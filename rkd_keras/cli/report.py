"""Tables and pictures of runs and comparisons: what a person reads instead of logs."""

import math

import numpy as np

from rkd_keras import presets

KS = (1, 2, 4, 8)
# A few-shot accuracy's key (`presets.few_shot_key`) ends so for its 95 % confidence half-width over episodes.
HALF_WIDTH = "_half_width"
# Result key → (column header, factor shown, unit). Recall, MAP@R and accuracy
# are shown in percent; the cross-entropy in nats.
COLUMNS = {
    **{f"recall_at_{k}": (f"R@{k}", 100, "%") for k in KS},
    "map_at_r": ("MAP@R", 100, "%"),
    # The asymmetric protocol (a teacher-indexed gallery): the student's queries ranked against the teacher's items.
    "asym_recall_at_1": ("R@1 vs teacher's gallery", 100, "%"),
    "asym_map_at_r": ("MAP@R vs teacher's gallery", 100, "%"),
    "accuracy": ("top-1", 100, "%"),
    "cross_entropy": ("CE", 1, "nats"),
    **{
        presets.few_shot_key(ways, shots): (f"{ways}-way {shots}-shot", 100, "%")
        for ways, shots in presets.COMPARE["few_shot"]["evaluation"]["settings"]
    },
}
# The validation score each task's runs are selected on, as in their history.csv. Few-shot runs are metric
# learning on the training classes: their held-out images are too few per class for episodes.
VALIDATION = {"metric": "val_recall_at_1", "classification": "val_accuracy", "few_shot": "val_recall_at_1"}


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


def _loss_terms(history):
    """The logged parts of a run's training loss (task loss, distillation terms): history columns but loss's."""
    return [key for key in history if key not in ("loss", "learning_rate", "accuracy") and not key.startswith("val_")]


def _epochs(history):
    return np.arange(1, len(history["loss"]) + 1)


def _whole_epochs(figure):
    """Epoch axes from the first to the last epoch drawn, ticks on whole epochs (one epoch too)."""
    from matplotlib.ticker import MaxNLocator

    for ax in figure.axes:
        last = max((max(line.get_xdata(), default=1) for line in ax.lines), default=1)
        if ax.get_xlabel() == "epoch":
            ax.set_xlim(0.5, last + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_report(path, results, histories, title=None):
    """One quantity per panel: test metrics per model (bars), validation score per epoch, each model's training loss.

    Recall and accuracy axes start at 0 and end at 100 %, each bar labelled
    with its value. Each model's loss is its own objective (a teacher's
    triplet loss, a student's weighted RKD terms), so each has its own panel
    and scale: their heights are not comparable.

    Args:
        path: The PNG to write.
        results: `{model: test metrics}`.
        histories: `{model: read_history(its run folder)}`.
        title: The figure's title; default: the models' names.

    Returns:
        The matplotlib figure (closed: it is written, not shown).
    """
    plt = _pyplot()
    models = len(histories)
    figure = plt.figure(figsize=(max(12, 3.2 * models), 8.5))
    grid = figure.add_gridspec(2, 2 * models)
    bars = figure.add_subplot(grid[0, :models])
    score = figure.add_subplot(grid[0, models:])
    # The headline scores: Recall@K, or accuracy (MAP@R's scale would hide the bars).
    keys = [key for key in _shown(next(iter(results.values()))) if key.startswith("recall_at_") or key == "accuracy"]
    recall = keys[0].startswith("recall_at_")
    width = 0.8 / len(results)
    for i, (name, metrics) in enumerate(results.items()):
        drawn = bars.bar(
            np.arange(len(keys)) + i * width, [100 * metrics[key] for key in keys], width, label=name, color=f"C{i}"
        )
        bars.bar_label(drawn, fmt="%.1f", label_type="center", rotation=90, fontsize=7)
    bars.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [COLUMNS[key][0] for key in keys])
    bars.set_ylim(0, 100)
    what = "Recall@K on the unseen test classes" if recall else "top-1 accuracy on the test images"
    bars.set(
        title=f"Test split: {what}", ylabel=f"{'Recall@K' if recall else 'accuracy'} (%)",
        xlabel="K, the neighbours searched" if recall else "metric",
    )
    validation = "Recall@1" if recall else "accuracy"
    monitor = VALIDATION["metric" if recall else "classification"]
    for i, (name, history) in enumerate(histories.items()):
        if monitor in history:
            score.plot(_epochs(history), 100 * np.asarray(history[monitor]), marker="o", label=name, color=f"C{i}")
    score.set(
        title=f"Validation {validation} per epoch (held-out training images)", xlabel="epoch",
        ylabel=f"validation {validation} (%)", ylim=(0, 100),
    )
    # One legend: every panel draws a model in the same colour.
    score.legend(fontsize=8, loc="lower right", title="model (every panel)", title_fontsize=8)
    score.grid(alpha=0.3)
    for i, (name, history) in enumerate(histories.items()):
        loss = figure.add_subplot(grid[1, 2 * i : 2 * i + 2])
        loss.plot(_epochs(history), history["loss"], marker="o", color=f"C{i}")
        terms = _loss_terms(history)
        parts = f"\n(weighted {' + '.join(terms)})" if terms else ""
        loss.set(title=f"{name}: training loss{parts}", xlabel="epoch", ylabel="training loss")
        loss.title.set_fontsize(9)
        loss.grid(alpha=0.3)
    figure.suptitle(title or ", ".join(results) + ": test scores, validation score and training loss")
    _whole_epochs(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return figure


def summarize(per_seed: dict, keys) -> dict:
    """`{model: {key: {"mean", "sd", "n"}}}` over seeds; sd is the sample standard deviation (None for one seed).

    A key measured with a 95 % half-width (`key + HALF_WIDTH`, few-shot
    accuracy over episodes) also gets `"half_width"`, its mean over seeds.

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
            if all(key + HALF_WIDTH in metrics for metrics in by_seed.values()):
                summary[name][key]["half_width"] = float(np.mean([metrics[key + HALF_WIDTH] for metrics in by_seed.values()]))
    return summary


ASYMMETRIC = ("asym_recall_at_1", "asym_map_at_r")


def asymmetric_summary(per_seed: dict) -> dict:
    """`summarize` of the asymmetric metrics, for the models that have them in every seed, the teacher first.

    The teacher querying its own gallery is the symmetric protocol: its row
    holds its own Recall@1 and MAP@R, the reference the students are read against.
    """
    def measured(by_seed):
        return bool(by_seed) and all(ASYMMETRIC[0] in metrics for metrics in by_seed.values())

    students = {name: by_seed for name, by_seed in per_seed.items() if name != "teacher" and measured(by_seed)}
    if not students or "teacher" not in per_seed:
        return {}
    teacher = {
        seed: {asym: metrics[asym.removeprefix("asym_")] for asym in ASYMMETRIC}
        for seed, metrics in per_seed["teacher"].items()
    }
    return summarize({"teacher": teacher, **students}, ASYMMETRIC)


def _cell(key, stats):
    """`mean ± sd` over seeds; for one seed of a key with a half-width (few-shot), `mean ± half-width`."""
    factor = COLUMNS[key][1]
    digits = 1 if factor == 100 else 3
    mean = f"{factor * stats['mean']:.{digits}f}"
    spread = stats["sd"] if stats["sd"] is not None else stats.get("half_width")
    return mean if spread is None else f"{mean} ± {factor * spread:.{digits}f}"


def _spread(summary, keys, count=True) -> str:
    """What the ± of a summary means: the sd over seeds (`count`: how many), or (one seed, few-shot) the 95 %
    half-width over episodes."""
    stats = next(iter(summary.values()))[keys[0]]
    if stats["n"] == 1 and "half_width" in stats:
        return "95 % half-width over episodes" + (", 1 seed" if count else "")
    return f"sd over {stats['n']} seed{'s' * (stats['n'] > 1)}" if count else "sd over seeds"


def _labels(labels):
    """Class labels as a person reads them: `5–9` for a run of consecutive labels, else `1, 3, 5`."""
    labels = sorted(labels)
    if len(labels) > 2 and labels == list(range(labels[0], labels[-1] + 1)):
        return f"{labels[0]}–{labels[-1]}"
    return ", ".join(map(str, labels))


def measured_split(config, items: int, few_shot=None) -> tuple:
    """What a comparison's runs were tested on, from their settings (a `RunConfig`): the data, not the preset.

    Args:
        config: The settings of a run (every run of a comparison has the same data settings).
        items: The number of test images its evaluation used (`max_eval_items` may cap it).
        few_shot: The few-shot protocol the runs were tested with (`{"settings", "queries", "episodes"}`), if any.

    Returns:
        `({"train_classes", "test_classes", "test_items"}, sentence)`: for metrics.json, and for table.md.
    """
    if config.task == "classification":
        classes = list(range(config.total_classes()))
        split = {"train_classes": classes, "test_classes": classes, "test_items": items}
        return split, (
            f"{config.dataset}, all {len(classes)} classes: top-1 accuracy and cross-entropy on {items:,} test images."
        )
    train = config.train_classes or config.default_train_classes()
    split = {
        "train_classes": train,
        "test_classes": [label for label in range(config.total_classes()) if label not in train],
        "test_items": items,
    }
    if few_shot is None:
        measure = "Recall@K and MAP@R"
    else:
        settings = ", ".join(f"{ways}-way {shots}-shot" for ways, shots in few_shot["settings"])
        measure = (
            f"few-shot accuracy ({settings}; {few_shot['queries']} queries per class, {few_shot['episodes']:,} "
            "episodes, prototypes the mean of the support embeddings)"
        )
    return split, (
        f"{config.dataset}, classes {_labels(split['train_classes'])} train, {_labels(split['test_classes'])} test: "
        f"{measure} on {items:,} test images of the classes unseen in training."
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
    out = [f"# {title}", "", *lines, "", f"## Mean ± {_spread(summary, keys)}", ""]
    out += ["| model | params | " + " | ".join(headers) + " | trained with |", "|---|---:|" + "---:|" * len(keys) + "---|"]
    for name in per_seed:
        cells = " | ".join(_cell(key, summary[name][key]) for key in keys)
        out.append(f"| {name} | {params[name]:,} | {cells} | {descriptions[name]} |")
    asymmetric = asymmetric_summary(per_seed)
    if asymmetric:
        out += [
            "", "## Teacher-indexed gallery (asymmetric protocol)", "",
            "The students of the teacher's embedding width embed the test queries; the teacher embeds the gallery "
            "(the same test images, each query's own item left out). The teacher's row is the teacher querying "
            "its own gallery.", "",
            "| model | R@1, own gallery (%) | " + " | ".join(f"{COLUMNS[key][0]} (%)" for key in ASYMMETRIC) + " |",
            "|---|" + "---:|" * (len(ASYMMETRIC) + 1),
        ]
        for name, stats in asymmetric.items():
            own = _cell("recall_at_1", summary[name]["recall_at_1"]) if "recall_at_1" in summary[name] else ""
            out.append(f"| {name} | {own} | " + " | ".join(_cell(key, stats[key]) for key in ASYMMETRIC) + " |")
    out += ["", "## Per seed", "", "| model | " + " | ".join(f"seed {seed}" for seed in seeds) + " |"]
    out.append("|---|" + "---|" * len(seeds))
    for name, by_seed in per_seed.items():
        cells = [" / ".join(_seed_cell(key, by_seed[seed]) for key in keys) if seed in by_seed else "" for seed in seeds]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    half_widths = any(key + HALF_WIDTH in metrics for key in keys for by_seed in per_seed.values() for metrics in by_seed.values())
    out += ["", "Per seed: " + " / ".join(COLUMNS[key][0] for key in keys) + (
        ", each ± its 95 % half-width over episodes." if half_widths else "."
    )]
    return "\n".join(out) + "\n"


def _seed_cell(key, metrics):
    factor = COLUMNS[key][1]
    digits = 1 if factor == 100 else 3
    value = f"{factor * metrics[key]:.{digits}f}"
    return value if key + HALF_WIDTH not in metrics else f"{value} ± {factor * metrics[key + HALF_WIDTH]:.{digits}f}"


def plot_comparison(path, summary, keys, curves, task, title=None, asymmetric=None):
    """One panel per metric (mean over seeds, sd as error bars, the teacher dashed) and the students' validation curves.

    Args:
        path: The PNG to write.
        summary: `summarize(...)`, the teacher first.
        keys: The result keys, one panel each.
        curves: `{model: [validation score per epoch, one list per seed]}`.
        task: `"metric"`, `"classification"` or `"few_shot"`, for the titles.
        title: The figure's title; default: the task's comparison.
        asymmetric: `asymmetric_summary(...)`: one more panel, the students'
            Recall@1 against the teacher's gallery (the teacher's own, dashed).

    Every axis starts at 0 (Recall, MAP@R and accuracy end at 100 % at most);
    each bar is labelled with its mean.

    Returns:
        The matplotlib figure (closed: it is written, not shown).
    """
    plt = _pyplot()
    asymmetric = asymmetric or {}
    bars = [(key, summary) for key in keys] + ([("asym_recall_at_1", asymmetric)] if asymmetric else [])
    panels = len(bars) + 1
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    axes = axes.ravel()
    names = list(summary)
    students = [name for name in names if name != "teacher"]
    colours = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}
    for ax, (key, table) in zip(axes, bars):
        header, factor, unit = COLUMNS[key]
        shown = [name for name in table if name != "teacher"]
        teacher = [factor * table["teacher"][key]["mean"]] if "teacher" in table else []
        means = np.array([factor * table[name][key]["mean"] for name in shown])
        # The sd over seeds; for one seed, a few-shot accuracy's 95 % half-width over episodes.
        sds = np.array([
            factor * (table[name][key]["sd"] if table[name][key]["sd"] is not None else table[name][key].get("half_width", 0.0))
            for name in shown
        ])
        drawn = ax.bar(np.arange(len(shown)), means, yerr=sds, capsize=3, color=[colours[name] for name in shown])
        ax.bar_label(drawn, fmt="%.1f" if factor == 100 else "%.3f", label_type="center", rotation=90, fontsize=7)
        if teacher:
            ax.axhline(teacher[0], color="black", linestyle="--", linewidth=1, label=f"teacher ({teacher[0]:.1f})")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(np.arange(len(shown)), shown, rotation=45, ha="right", fontsize=8)
        top = 1.15 * max(np.concatenate([means + sds, teacher]).max(), 1e-12)
        ax.set_ylim(0, min(top, 100) if unit == "%" else top)
        lower = "lower is better" if key == "cross_entropy" else "higher is better"
        ax.set_title(f"{header} ({unit}; mean ± {_spread(table, [key], count=False)}, {lower})", fontsize=10)
        ax.set(ylabel=f"test {header} ({unit})", xlabel="student")
        ax.grid(axis="y", alpha=0.3)
    curve_axes = axes[len(bars)]
    for name in students:
        runs = curves.get(name, [])
        length = min((len(run) for run in runs), default=0)
        if length:
            mean = 100 * np.mean([run[:length] for run in runs], axis=0)
            curve_axes.plot(np.arange(1, length + 1), mean, marker="o", markersize=3, color=colours[name], label=name)
    what = "accuracy" if task == "classification" else "Recall@1"
    curve_axes.set(
        title=f"Students' validation {what} (%, mean over seeds)", xlabel="epoch", ylabel=f"validation {what} (%)",
        ylim=(0, 100),
    )
    curve_axes.legend(fontsize=7, ncol=2, loc="lower right")
    curve_axes.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.axis("off")
    figure.suptitle(title or f"rkd-keras compare --task {task}: test scores, mean ± {_spread(summary, keys)}")
    _whole_epochs(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return figure


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
