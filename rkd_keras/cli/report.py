"""Tables and pictures of runs: what a person reads instead of logs."""

import numpy as np

KS = (1, 2, 4, 8)


def print_table(results):
    """Prints Recall@K (percent) and parameter counts, one row per model."""
    print(f"\n{'model':<10} {'params':>10} " + " ".join(f"{'R@' + str(k):>6}" for k in KS) + f" {'MAP@R':>6}")
    for name, metrics in results.items():
        recalls = " ".join(f"{100 * metrics[f'recall_at_{k}']:6.2f}" for k in KS)
        print(f"{name:<10} {metrics['params']:>10,} {recalls} {100 * metrics['map_at_r']:6.2f}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(path, results, histories):
    """Recall@K per model (bars) beside validation R@1 and loss per epoch (curves)."""
    plt = _pyplot()
    figure, (bars, recall, loss) = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / len(results)
    for i, (name, metrics) in enumerate(results.items()):
        values = [100 * metrics[f"recall_at_{k}"] for k in KS]
        bars.bar(np.arange(len(KS)) + i * width, values, width, label=name)
    bars.set_xticks(np.arange(len(KS)) + 0.4 - width / 2, [f"R@{k}" for k in KS])
    low = min(100 * m["recall_at_1"] for m in results.values())
    bars.set_ylim(max(0, low - 10), 100)
    bars.set_title("Recall@K on the unseen test classes (%)")
    bars.legend(fontsize=8)
    for name, history in histories.items():
        epochs = np.arange(1, len(history["loss"]) + 1)
        if "val_recall_at_1" in history:
            recall.plot(epochs, 100 * np.asarray(history["val_recall_at_1"]), marker="o", label=name)
        loss.plot(epochs, history["loss"], marker="o", label=name)
    recall.set(title="Validation Recall@1 (%, training classes)", xlabel="epoch")
    loss.set(title="Training loss", xlabel="epoch", yscale="log")
    for axes in (recall, loss):
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
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
