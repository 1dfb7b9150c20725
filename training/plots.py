"""Figures for a bundle: confusion matrix, training curves, reliability diagram (PNG)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def confusion_matrix(y_true, y_pred, display_labels, path, title="Confusion matrix (test split)"):
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(display_labels), 1.2 + 1.2 * len(display_labels)))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(display_labels))), display_labels=display_labels,
        ax=ax, colorbar=False, xticks_rotation=30, cmap="Blues")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(history, path):
    keys = [k for k in ("loss", "accuracy") if k in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.plot(history[k], label="train")
        if f"val_{k}" in history:
            ax.plot(history[f"val_{k}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability(confidence, correct, path, bins=10):
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    acc = [correct[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(edges[:-1], acc, width=1 / bins, align="edge", alpha=0.7, edgecolor="k", label="test split")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (after temperature scaling)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
