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


def plot_embedding_map(path, embeddings, labels, class_names=None):
    """2-D PCA maps of several models' embeddings of the same items, side by side."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(embeddings), figsize=(6 * len(embeddings), 5.5), squeeze=False)
    classes = np.unique(labels)
    for ax, (name, values) in zip(axes[0], embeddings.items()):
        centred = values - values.mean(axis=0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        points = centred @ components[:2].T
        for c in classes:
            chosen = labels == c
            label = class_names[c] if class_names is not None else str(c)
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, label=label)
        ax.set_title(f"{name}: first two principal components")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=4, fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
