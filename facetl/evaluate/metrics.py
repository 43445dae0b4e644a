"""Classification metrics from labels and predicted probabilities (pure functions, via scikit-learn)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score,
                             roc_curve)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """accuracy, precision, recall, f1 (binary for two classes, macro otherwise), roc_auc, confusion matrix.

    ROC-AUC is macro one-vs-rest for more than two classes, over the classes present in `labels`.
    """
    classes = probs.shape[1]
    predicted = probs.argmax(1)
    binary = classes == 2
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary" if binary else "macro", zero_division=0,
        labels=None if binary else list(range(classes)))
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc(labels, probs),
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
