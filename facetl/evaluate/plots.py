"""The pictures a person looks at instead of reading numbers: curves, confusion matrix, ROC, galleries.

Each plot_* function writes its PNG and returns the (closed) figure, so a caller or a test can read what
it shows: legend entries, captions, bars.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from facetl.evaluate.metrics import (average_roc_curves, decide, expected_calibration_error, per_class_auc,  # noqa: E402
                                     reliability_bins, roc_curves)
from facetl.evaluate.predictions import SplitResult  # noqa: E402
from facetl.history import EPOCH, STRATEGY, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS  # noqa: E402
from facetl.runfolder import atomic_write_bytes  # noqa: E402

MANY_CLASSES = 10  # above this, one ROC line per class is an unreadable tangle: per-class AUC bars instead
CAPTION_WIDTH = 24  # characters that fit under a gallery image at font size 7


def _save(fig: Figure, path: Path) -> Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return fig


def clip(text: str, width: int = CAPTION_WIDTH) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def short_name(path: str, width: int = CAPTION_WIDTH) -> str:
    """The file's folder and name (`positives7/123.jpg`), cut from the left when longer than `width`."""
    name = "/".join(str(path).replace("\\", "/").split("/")[-2:])
    return name if len(name) <= width else "…" + name[-(width - 1):]


def plot_curves(history: list[dict], path: Path, title: str = "", best_epoch: int | None = None,
                select: str | None = None) -> Figure:
    """Loss and accuracy per epoch, with the epoch whose weights were kept marked on both panels."""
    epochs = [h[EPOCH] for h in history]
    best = next((h for h in history if h[EPOCH] == best_epoch), None)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"wspace": 0.28})
    for ax, (train, val), name in ((ax_loss, (TRAIN_LOSS, VAL_LOSS), "loss"), (ax_acc, (TRAIN_ACC, VAL_ACC),
                                                                               "accuracy")):
        ax.plot(epochs, [h[train] for h in history], "o-", label="train")
        ax.plot(epochs, [h[val] for h in history], "o-", label="validation")
        if best is not None:
            label = f"selected epoch {best_epoch}" + (f" (by {select})" if select else "")
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1.2, label=label)
            ax.plot([best_epoch], [best[val]], "*", ms=13, color="tab:green")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
        ax.margins(x=0.08)  # keeps a selected last epoch's line off the frame
        ax.grid(alpha=0.3)
        for h, before in zip(history[1:], history):  # gradual unfreezing steps
            if h.get(STRATEGY) and before.get(STRATEGY) and h[STRATEGY] != before[STRATEGY]:
                ax.axvline(h[EPOCH] - 0.5, color="grey", ls=":", lw=1.2)
                ax.annotate(f"unfreeze: {h[STRATEGY]}", (h[EPOCH] - 0.5, 1), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=7, color="dimgrey")
    # one legend under both panels: inside either, it would cover a spike or the last epochs
    fig.legend(*ax_loss.get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_lr_find(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float, path: Path,
                 title: str = "", rule: str = "steepest descent") -> Figure:
    """Loss against learning rate (log axis) from the range test, with the suggested LR marked. The first tenth
    of the steps (the smoothing's warm-up) and the divergence at the end are kept out of the y range."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(lrs, losses, color="tab:blue", alpha=0.15, lw=0.8, label="loss per batch")
    ax.plot(lrs, smoothed, color="tab:blue", lw=2, label="smoothed loss")
    at = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - np.log(suggestion)))) if lrs else 0
    if lrs:
        ax.plot([suggestion], [smoothed[at]], "o", ms=9, color="tab:red", label=f"suggested lr {suggestion:.2g} ({rule})")
        ax.axvline(suggestion, color="tab:red", lw=0.8, ls=":")
        shown = np.asarray(smoothed[max(1, len(smoothed) // 10):])
        low = float(shown.min())
        high = float(smoothed[max(1, len(smoothed) // 10)])
        span = max(high - low, 0.05 * low, 1e-6)
        ax.set_ylim(low - 0.3 * span, high + 1.5 * span)
    ax.set(xscale="log", xlabel="learning rate (head; earlier blocks keep their --lr-decay ratio)", ylabel="loss",
           title=title or "learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return _save(fig, path)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> Figure:
    """Counts in the cells; colour is the share of the true class (row), so small classes' errors show too."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    totals = matrix.sum(1)
    share = matrix / np.maximum(totals, 1)[:, None]
    size = max(4.5, 0.38 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share of the true class")
    small = n > MANY_CLASSES
    ax.set_xticks(range(n), [clip(c) for c in class_names], rotation=60 if n > 4 else 0,
                  ha="right" if n > 4 else "center", rotation_mode="anchor", fontsize=8 if small else 10)
    ax.set_yticks(range(n), [f"{clip(c)} ({t})" for c, t in zip(class_names, totals)], fontsize=8 if small else 10)
    ax.set(xlabel="predicted", ylabel="true (images)", title="confusion matrix: counts, coloured by row share")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                text = str(int(matrix[i, j])) if small else f"{int(matrix[i, j])}\n{share[i, j]:.0%}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if small else 10,
                        color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_roc(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path) -> Figure:
    """One curve per class with its AUC; beyond MANY_CLASSES, sorted per-class AUC bars + averaged curves."""
    if probs.shape[1] > MANY_CLASSES:
        return _save(_roc_many(labels, probs, class_names), path)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    aucs, curves = per_class_auc(labels, probs), roc_curves(labels, probs)
    for c, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, lw=2 if len(curves) == 1 else 1.2, label=f"{clip(class_names[c])} (AUC {aucs[c]:.3f})")
    if len(curves) > 1:
        fpr, tpr, auc = average_roc_curves(labels, probs)["macro-average"]
        ax.plot(fpr, tpr, "k-", lw=2.2, alpha=0.7, label=f"macro-average (AUC {auc:.3f})")
    title = (f"ROC: {clip(class_names[1])} against {clip(class_names[0])}" if probs.shape[1] == 2
             else "ROC, each class against the rest")
    _roc_frame(ax, title, bool(curves))
    return _save(fig, path)


def plot_precision_recall(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path,
                          threshold: float | None = None) -> Figure:
    """Two classes: precision against recall as the threshold moves, with the run's threshold marked and the
    base rate (what a model that says 'positive' to everything gets) as the floor."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    positive, base = clip(class_names[1]), float(np.mean(labels == 1)) if len(labels) else 0.0
    if 0 < base < 1:
        precision, recall, cuts = precision_recall_curve(labels, probs[:, 1])
        ax.plot(recall, precision, lw=2,
                label=f"{positive} (average precision {average_precision_score(labels, probs[:, 1]):.3f})")
        t = 0.5 if threshold is None else threshold
        predicted = probs[:, 1] >= t
        if predicted.any():
            p_at, r_at = float(np.mean(labels[predicted] == 1)), float(np.mean(predicted[labels == 1]))
            ax.plot([r_at], [p_at], "o", color="tab:red", ms=8, label=f"threshold {t:.3f}")
    ax.axhline(base, color="k", ls="--", lw=0.8, label=f"base rate {base:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"recall (of {positive})", ylabel="precision",
           title=f"Precision-recall: {positive}")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path, split: str = "",
                     temperature: float = 1.0) -> Figure:
    """Reliability diagram: per bin of stated probability, how often it came true, against the diagonal of a
    calibrated model; below it, the images per bin, since a bin of 3 images says little."""
    rows = reliability_bins(labels, probs)
    ece = expected_calibration_error(labels, probs)
    binary = probs.shape[1] == 2
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.5, 6.2), sharex=True,
                                   gridspec_kw={"height_ratios": [4, 1.1], "hspace": 0.08})
    width = rows[0]["high"] - rows[0]["low"]
    filled = [r for r in rows if r["count"]]
    ax.bar([r["low"] for r in filled], [r["observed"] for r in filled], width=width, align="edge",
           color="tab:blue", edgecolor="white", alpha=0.8,
           label=f"observed share of {clip(class_names[1])}" if binary else "observed share right")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.plot([r["stated"] for r in filled], [r["stated"] for r in filled], "o", color="tab:red", ms=4,
            label="mean stated probability")
    where = f" on {split}" if split else ""
    scaled = f" (temperature T={temperature:.2f})" if temperature != 1.0 else ""
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="observed frequency",
           title=(f"Reliability{where}: ECE {ece:.3f}" if ece is not None else f"Reliability{where}") + scaled)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_n.bar([r["low"] for r in rows], [r["count"] for r in rows], width=width, align="edge", color="tab:gray",
             edgecolor="white")
    top = max(r["count"] for r in rows) or 1
    for r in filled:
        ax_n.text(r["low"] + width / 2, r["count"] + top * 0.04, str(r["count"]), ha="center", va="bottom",
                  fontsize=7)
    what = f"P({clip(class_names[1])})" if binary else "top-class confidence"
    ax_n.set(ylim=(0, top * 1.45), xlabel=f"stated probability: {what}", ylabel="images")
    ax_n.yaxis.set_major_locator(MaxNLocator(nbins=2, integer=True))
    return _save(fig, path)


def _roc_frame(ax, title: str, any_curve: bool) -> None:
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance (AUC 0.5)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(-0.02, 1.02),
           ylim=(-0.02, 1.02))
    ax.set_aspect("equal")
    if not any_curve:
        ax.text(0.5, 0.6, "undefined: one class only in these labels", ha="center", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")


def _roc_many(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Figure:
    aucs = per_class_auc(labels, probs)
    order = sorted(aucs, key=aucs.get)  # weakest first, drawn at the top where the eye starts
    fig, (ax_bar, ax_roc) = plt.subplots(1, 2, figsize=(12, max(5.0, 0.24 * len(order) + 1.5)),
                                         gridspec_kw={"width_ratios": [1.1, 1]})
    _auc_bars(ax_bar, [class_names[c] for c in order], [aucs[c] for c in order], len(class_names))
    for fpr, tpr in roc_curves(labels, probs).values():
        ax_roc.plot(fpr, tpr, color="0.6", lw=0.6, alpha=0.5)
    if order:
        ax_roc.plot([], [], color="0.6", lw=0.6, label=f"each class against the rest ({len(order)})")
    for name, (fpr, tpr, auc) in average_roc_curves(labels, probs).items():
        ax_roc.plot(fpr, tpr, lw=2, label=f"{name} (AUC {auc:.3f})")
    _roc_frame(ax_roc, "ROC, averaged over classes", bool(order))
    return fig


def _auc_bars(ax, names: list[str], aucs: list[float], classes: int) -> None:
    ax.barh(range(len(names)), aucs, color="tab:blue", height=0.7)
    ax.set_yticks(range(len(names)), [clip(n, 28) for n in names], fontsize=8)
    ax.invert_yaxis()
    for y, auc in enumerate(aucs):
        # a white box keeps the number readable where the chance or mean line crosses it
        ax.text(auc + 0.01, y, f"{auc:.3f}", va="center", fontsize=7,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.axvline(0.5, color="k", ls="--", lw=0.8)
    if aucs:
        ax.axvline(np.mean(aucs), color="tab:orange", lw=1.2, label=f"mean {np.mean(aucs):.3f} (macro)")
        ax.legend(fontsize=8, loc="lower left")
    absent = classes - len(names)
    ax.set(xlim=(0, 1.1), xlabel="one-vs-rest ROC-AUC",
           title="per-class ROC-AUC, weakest first" + (f" ({absent} {'class' if absent == 1 else 'classes'} not in this split)" if absent else ""))


def image_grid(images: Sequence, captions: list[str], path: Path, title: str = "", columns: int = 8,
               colors: list[str] | None = None, cell: tuple[float, float] = (1.6, 1.85)) -> Figure:
    """A labelled grid of uint8 HxWx3 images; `cell` is each image's (width, height) in inches."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell[0], rows * cell[1]), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k])
            ax.set_title(captions[k], fontsize=7, color=(colors[k] if colors else "black"))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_errors(result: SplitResult, class_names: list[str], path: Path, count: int = 24,
                threshold: float | None = None) -> Figure:
    """The most confident mistakes, each captioned with its file, true label, prediction and probability.

    Only the images shown are read from `result.images` (it may be a lazy view of a large store).
    """
    images, labels, probs, names = result.images, result.labels, result.probs, result.names
    predicted = decide(probs, threshold)
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:count]
    captions = [(f"{short_name(names[i])}\n" if names is not None else "")
                + f"true {clip(class_names[labels[i]], 19)}\n"
                f"pred {clip(class_names[predicted[i]], 14)} {probs[i, predicted[i]]:.2f}" for i in shown]
    if len(shown) == 0:
        return image_grid([np.full((8, 8, 3), 255, np.uint8)], ["no mistakes"], path, title="no mistakes",
                          columns=6)
    which = f"all {len(wrong)}" if len(shown) == len(wrong) else f"{len(shown)} of {len(wrong)}"
    title = f"{which} mistakes ({len(labels)} images), most confident first"
    return image_grid([images[i] for i in shown], captions, path, title=title, columns=6, cell=(1.9, 2.3))


def plot_class_balance(counts: dict[str, int], path: Path) -> Figure:
    names, values = list(counts), list(counts.values())
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 3.8))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center", fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=7)
    ax.set(ylabel="images", title="images per class")
    return _save(fig, path)


ATTRIBUTE_BARS = (("balanced_accuracy", "balanced accuracy", "tab:blue"), ("f1", "F1", "tab:green"),
                  ("roc_auc", "ROC-AUC", "tab:orange"))


def plot_attribute_metrics(metrics: dict, path: Path, title: str = "") -> Figure:
    """A multi-attribute run: balanced accuracy, F1 and ROC-AUC of each attribute as grouped horizontal bars, its
    base rate as a black tick, and the means over the attributes in the legend. A metric undefined for an
    attribute (one value in the split) has no bar."""
    names = list(metrics["attributes"])
    per = metrics["attributes"]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.42 * len(names) * len(ATTRIBUTE_BARS) / 2))
    height = 0.8 / len(ATTRIBUTE_BARS)
    for j, (key, label, colour) in enumerate(ATTRIBUTE_BARS):
        values = [per[n].get(key) for n in names]
        ys = [y - 0.4 + height * (j + 0.5) for y in range(len(names))]
        mean = metrics.get(key)
        ax.barh([y for y, v in zip(ys, values) if v is not None], [v for v in values if v is not None],
                height=height, color=colour, label=f"{label} (mean {mean:.3f})" if mean is not None else label)
        for y, v in zip(ys, values):
            if v is not None:
                ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=6)
    base = [per[n].get("base_rate") for n in names]
    ax.scatter([b for b in base if b is not None], [y for y, b in enumerate(base) if b is not None], marker="|",
               s=300, color="k", zorder=3, label="base rate (share with the attribute)")
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_yticks(range(len(names)), [clip(n, 28) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.12), xlabel=f"{metrics.get('split', '')} split, each attribute over the images that have "
                                  "its value",
           title=title or "metrics per attribute")
    # under the x label, at the same distance in inches whatever the number of attributes
    below = 0.5 / (ax.get_position().height * fig.get_figheight())
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -below), ncol=2, frameon=False)
    return _save(fig, path)
