"""Classification metrics from labels and predicted probabilities (pure functions, via scikit-learn)."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The predicted class of each row: with two classes, class 1 when its probability reaches `threshold`
    (None: 0.5); with more, the most probable class."""
    if probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(1)


def choose_threshold(labels: np.ndarray, probs: np.ndarray, rule: str) -> float | None:
    """A two-class decision threshold from (validation) labels and probabilities: `rule` is a probability,
    or f1 / balanced for the one that maximises F1 / balanced accuracy (the midpoint between neighbouring
    probabilities, so it generalises no further than the data allows). None when it cannot apply."""
    if probs.shape[1] != 2:
        return None
    if rule not in ("f1", "balanced"):
        return float(rule)
    if len(np.unique(labels)) < 2:
        return 0.5
    p = np.unique(probs[:, 1])
    candidates = np.concatenate([[0.5], (p[1:] + p[:-1]) / 2 if len(p) > 1 else p])
    score = f1_score if rule == "f1" else balanced_accuracy_score
    values = [score(labels, (probs[:, 1] >= t).astype(int), **({"zero_division": 0} if rule == "f1" else {}))
              for t in candidates]
    return float(candidates[int(np.argmax(values))])  # ties: the first, 0.5 when it is as good


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict:
    """accuracy, balanced accuracy, precision, recall, f1 (binary for two classes, macro otherwise), roc_auc,
    the base rate of the positive class, confusion matrix; labels decided with `threshold` (see decide).

    ROC-AUC is macro one-vs-rest for more than two classes, over the classes present in `labels`.
    """
    classes = probs.shape[1]
    predicted = decide(probs, threshold)
    binary = classes == 2
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary" if binary else "macro", zero_division=0,
        labels=None if binary else list(range(classes)))
    with warnings.catch_warnings():  # a class absent from a small split: balanced accuracy still defined
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(labels, predicted)) if len(labels) else float("nan")
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc(labels, probs),
        "threshold": 0.5 if binary and threshold is None else threshold,
        "base_rate": float(np.mean(labels == 1)) if binary and len(labels) else None,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=list(range(classes))).tolist(),
        "n_images": int(len(labels)),
    }


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    present = np.unique(labels)
    if len(present) < 2:
        return None  # undefined with a single class present
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def roc_curves(labels: np.ndarray, probs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """False- and true-positive rates: the positive class for two classes, one-vs-rest per class otherwise."""
    if probs.shape[1] == 2:
        fpr, tpr, _ = roc_curve(labels, probs[:, 1])
        return {1: (fpr, tpr)}
    curves = {}
    for c in range(probs.shape[1]):
        if 0 < (labels == c).sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
            curves[c] = (fpr, tpr)
    return curves


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> dict[int, float]:
    """One-vs-rest ROC-AUC of every class that has both positives and negatives in `labels`."""
    if probs.shape[1] == 2:
        auc = roc_auc(labels, probs)
        return {} if auc is None else {1: auc}
    return {c: float(roc_auc_score(labels == c, probs[:, c])) for c in roc_curves(labels, probs)}


def average_roc_curves(labels: np.ndarray, probs: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Micro- and macro-averaged one-vs-rest ROC curves with their AUCs (empty below two classes present).

    Micro pools every (image, class) decision; macro averages the per-class curves on a common grid, and its
    AUC is the mean per-class AUC, the number metrics.json reports as roc_auc.
    """
    curves = roc_curves(labels, probs)
    if not curves:
        return {}
    onehot = labels[:, None] == np.arange(probs.shape[1])[None, :]
    micro_fpr, micro_tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
    grid = np.linspace(0, 1, 201)
    # interpolate each class's step curve; curves start at (0, 0), so the grid's first point stays 0
    macro_tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves.values()], axis=0)
    return {"micro-average": (micro_fpr, micro_tpr, float(roc_auc_score(onehot.ravel(), probs.ravel()))),
            "macro-average": (grid, macro_tpr, float(np.mean(list(per_class_auc(labels, probs).values()))))}


def val_loss_jumps(history: list[dict], factor: float) -> list[dict]:
    """Epochs whose validation loss is above `factor` times the lowest one before them (or is not finite).

    Each is {'epoch', 'val_loss', 'best_epoch', 'best_loss'}, where best_* is that lowest earlier epoch.
    """
    jumps, best = [], None
    for row in history:
        loss = float(row["val_loss"])
        if best is not None and (not np.isfinite(loss) or loss > factor * best["val_loss"]):
            jumps.append({"epoch": row["epoch"], "val_loss": loss, "best_epoch": best["epoch"],
                          "best_loss": float(best["val_loss"])})
        if np.isfinite(loss) and (best is None or loss < best["val_loss"]):
            best = row
    return jumps
