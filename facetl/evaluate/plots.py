"""The pictures a person looks at instead of reading numbers: curves, confusion matrix, ROC, galleries."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facetl.evaluate.metrics import roc_curves  # noqa: E402
from facetl.runfolder import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> None:
    matrix = np.asarray(matrix)
    n = len(class_names)
    size = max(4.5, 0.38 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=60 if n > 4 else 0, ha="right" if n > 4 else "center",
                  fontsize=8 if n > 10 else 10)
    ax.set_yticks(range(n), class_names, fontsize=8 if n > 10 else 10)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7 if n > 10 else 10,
                        color="white" if matrix[i, j] > top / 2 else "black")
    _save(fig, path)


def plot_roc(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    curves = roc_curves(labels, probs)
    for c, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, lw=1.2 if len(curves) > 2 else 2, label=class_names[c])
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    if len(curves) <= 12:
        ax.legend(fontsize=8)
    _save(fig, path)


def image_grid(images: list[np.ndarray], captions: list[str], path: Path, title: str = "",
               columns: int = 8, colors: list[str] | None = None) -> None:
    """A labelled grid of uint8 HxWx3 images."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.85), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k])
            ax.set_title(captions[k], fontsize=7, color=(colors[k] if colors else "black"))
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_errors(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                path: Path, count: int = 24) -> int:
    """The most confident mistakes, with true label, prediction and probability. Returns how many."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    captions = [f"true {class_names[labels[i]]}\npred {class_names[predicted[i]]} {probs[i, predicted[i]]:.2f}"
                for i in wrong]
    if len(wrong) == 0:
        captions, shown = ["no mistakes"], [np.full((8, 8, 3), 255, np.uint8)]
    else:
        shown = [images[i] for i in wrong]
    image_grid(shown, captions, path, title="most confident mistakes", columns=6, colors=None)
    return len(wrong)


def plot_class_balance(counts: dict[str, int], path: Path) -> None:
    names, values = list(counts), list(counts.values())
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 3.8))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center", fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=7)
    ax.set(ylabel="images", title="images per class")
    _save(fig, path)
