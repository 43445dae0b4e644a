"""Classification metrics from labels and predicted probabilities (pure functions, via scikit-learn).

METRICS is the one table of the numbers a run is judged by: metrics.json, report.md, the sweep's and the
folds' results, serve's model cards and the line at the end of training all read it, so a metric added to
it is computed, saved and shown everywhere.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, precision_score,
                             recall_score, roc_auc_score, roc_curve)

from facetl.history import EPOCH, VAL_LOSS


@dataclass(frozen=True)
class Metric:
    """One number a run is judged by, and everything that shows it needs to know."""

    key: str                      # its key in metrics.json and its column in results.csv
    label: str                    # its column header in tables and its name on the printed line
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], float | None] | None = None
    """(labels, decided labels, probabilities) -> the value (None where undefined); None: not from these"""
    higher_is_better: bool = True
    decimals: int = 4
    summary: bool = True          # in the tables that sum a run up: report.md's, results.md's, the model card
    per_group: bool = False       # in the per-group table of --groups
    words: str = ""               # its name in report.md's headline table, when longer than the label

    def format(self, value) -> str:
        return "n/a" if value is None else f"{value:.{self.decimals}f}"

    @property
    def title(self) -> str:
        return self.words or self.label


def _averaged(score):
    """A precision/recall/F1 score of the positive class with two classes, macro over every class with more."""
    def compute(labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> float:
        binary = probs.shape[1] == 2
        return float(score(labels, predicted, average="binary" if binary else "macro", zero_division=0,
                           labels=None if binary else list(range(probs.shape[1]))))
    return compute


def _balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> float:
    if not len(labels):
        return float("nan")
    with warnings.catch_warnings():  # a class absent from a small split: balanced accuracy still defined
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(labels, predicted))


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", lambda labels, predicted, probs: float(accuracy_score(labels, predicted)),
           per_group=True),
    Metric("balanced_accuracy", "balanced acc", _balanced_accuracy, per_group=True, words="balanced accuracy"),
    Metric("precision", "precision", _averaged(precision_score)),
    Metric("recall", "recall", _averaged(recall_score)),
    Metric("f1", "F1", _averaged(f1_score), per_group=True),
    Metric("roc_auc", "ROC-AUC", lambda labels, predicted, probs: roc_auc(labels, probs), per_group=True),
    # ECE has report.md's calibration section rather than a column
    Metric("ece", "ECE", lambda labels, predicted, probs: expected_calibration_error(labels, probs),
           higher_is_better=False, summary=False),
)


def metric_table() -> tuple[Metric, ...]:
    """METRICS as it is now: every user reads it at call time, so the table is the only list there is."""
    return METRICS


def summary_metrics() -> list[Metric]:
    """The metrics of the tables that sum a run up."""
    return [m for m in METRICS if m.summary]


# The validation figures at the epoch a run selected (history.csv's): what chooses an epoch within a run
# (--select), and a run within a sweep or a study; they are not computed from a split's predictions.
VALIDATION: tuple[Metric, ...] = (
    Metric("val_loss", "val loss", higher_is_better=False, summary=False),
    Metric("val_acc", "val acc", summary=False),
)


def metric(key: str) -> Metric:
    """The metric `key` (a test metric or a validation figure), which knows its direction; KeyError if none."""
    found = next((m for m in (*METRICS, *VALIDATION) if m.key == key), None)
    if found is None:
        raise KeyError(key)
    return found


def best_of(rows: list[dict], key: str) -> int | None:
    """The index of the best row by metric `key`, in the metric's direction (the first of equals); rows without
    the value do not compete; None when none has it. The one meaning of "best" in sweeps, studies and `runs`."""
    chosen = metric(key)
    present = [i for i, r in enumerate(rows) if r.get(key) is not None]
    if not present:
        return None
    sign = 1 if chosen.higher_is_better else -1
    return max(present, key=lambda i: (sign * rows[i][key], -i))


def best_words(key: str) -> str:
    """How `key` chose the best, for a table's note: 'the lowest val loss'."""
    chosen = metric(key)
    return f"the {'highest' if chosen.higher_is_better else 'lowest'} {chosen.label}"


def group_metrics_shown() -> list[Metric]:
    return [m for m in METRICS if m.per_group]


def metric_line(metrics: dict) -> str:
    """Every metric of the table on one line: 'accuracy 0.9000  balanced acc 0.8750  ...  ECE 0.0412'."""
    return "  ".join(f"{m.label} {m.format(metrics.get(m.key))}" for m in METRICS)


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
    """Every computed metric of METRICS (precision, recall and F1 binary for two classes, macro otherwise),
    the base rate of the positive class, confusion matrix; labels decided with `threshold` (see decide).

    ROC-AUC is macro one-vs-rest for more than two classes, over the classes present in `labels`.
    """
    classes = probs.shape[1]
    predicted = decide(probs, threshold)
    binary = classes == 2
    return {
        **{m.key: m.compute(labels, predicted, probs) for m in METRICS if m.compute is not None},
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
        loss = float(row[VAL_LOSS])
        if best is not None and (not np.isfinite(loss) or loss > factor * best[VAL_LOSS]):
            jumps.append({EPOCH: row[EPOCH], VAL_LOSS: loss, "best_epoch": best[EPOCH],
                          "best_loss": float(best[VAL_LOSS])})
        if np.isfinite(loss) and (best is None or loss < best[VAL_LOSS]):
            best = row
    return jumps


# --- calibration: do the probabilities mean what they say?

CALIBRATION_BINS = 15  # equal-width bins over [0, 1], as in Guo et al. 2017 (On Calibration of Modern Neural Networks)


def calibration_pairs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stated probability, outcome) per image: two classes, P(class 1) and whether it is class 1; more, the
    top class's confidence and whether the top class is right."""
    if probs.shape[1] == 2:
        return probs[:, 1], (labels == 1).astype(np.float64)
    return probs.max(1), (probs.argmax(1) == labels).astype(np.float64)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width bin of stated probability: its edges, how many images, their mean stated probability
    and how often the outcome happened (None in an empty bin)."""
    stated, outcome = calibration_pairs(labels, probs)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(stated, edges[1:-1], right=True), 0, bins - 1)  # 1.0 falls in the last bin
    rows = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "stated": float(stated[inside].mean()) if count else None,
                     "observed": float(outcome[inside].mean()) if count else None})
    return rows


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float | None:
    """ECE: the image-weighted mean, over bins, of |mean stated probability - observed frequency|."""
    if len(labels) == 0:
        return None
    rows = reliability_bins(labels, probs, bins)
    return float(sum(r["count"] * abs(r["stated"] - r["observed"]) for r in rows if r["count"]) / len(labels))


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, 1) or (N, classes) logits divided by `temperature` -> (N, classes) probabilities, as the model
    gives them (a single logit becomes [1 - p, p])."""
    from scipy.special import expit, softmax

    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.shape[1] == 1:
        p = expit(z[:, 0])
        return np.stack([1 - p, p], axis=1)
    return softmax(z, axis=1)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the labels under the logits divided by `temperature` (unweighted, whatever --balance was)."""
    from scipy.special import log_softmax

    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.shape[1] == 1:  # -log sigmoid(±z), computed without overflow
        sign = np.where(labels == 1, 1.0, -1.0)
        return float(np.mean(np.logaddexp(0.0, -sign * z[:, 0])))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(labels)), labels]))


TEMPERATURE_RANGE = (0.01, 1000.0)  # a bound, not a prior: logits in the hundreds happen at a high --lr


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The one temperature T > 0 that minimises the NLL of `labels` under logits / T (temperature scaling).
    NLL is convex in 1/T, so a bounded search over log T finds the minimum; T > 1 softens an overconfident
    model, T < 1 sharpens a timid one. A decision by the largest probability never changes."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    best = float(np.exp(found.x))
    # the search never returns a worse temperature than none at all
    return best if negative_log_likelihood(logits, labels, best) <= negative_log_likelihood(logits, labels) else 1.0


# --- the same metrics per group (--groups): does the model work as well for everyone?

GAP_MIN_IMAGES = 10  # a group of 2 images scores 0, 0.5 or 1: gaps are taken over groups at least this large


def group_metrics(labels: np.ndarray, probs: np.ndarray, groups: list[str], threshold: float | None = None,
                  min_images: int = GAP_MIN_IMAGES) -> dict:
    """Per value of `groups`: images, base rate and each per-group metric of METRICS (accuracy, balanced
    accuracy, F1, ROC-AUC; None where a group lacks what the metric needs), and per metric the largest gap
    between groups of at least `min_images`."""
    groups = np.asarray(groups, dtype=object)
    predicted = decide(probs, threshold)
    binary = probs.shape[1] == 2
    keys = [m.key for m in group_metrics_shown()]
    rows = []
    for name in sorted(set(groups.tolist()), key=str):
        inside = groups == name
        y, p = labels[inside], predicted[inside]
        row = {"group": str(name), "n": int(inside.sum()), "base_rate": float(np.mean(y == 1)) if binary else None}
        for m in group_metrics_shown():
            row[m.key] = (_group_f1 if m.key == "f1" else m.compute)(y, p, probs[inside])
        rows.append(row)
    large = [r for r in rows if r["n"] >= min_images]
    gaps = {}
    for key in keys:
        scored = [r for r in large if r[key] is not None]
        if len(scored) < 2:
            gaps[key] = None
            continue
        low, high = min(scored, key=lambda r: r[key]), max(scored, key=lambda r: r[key])
        gaps[key] = {"gap": high[key] - low[key], "lowest": low["group"], "highest": high["group"]}
    return {"per_group": rows, "gaps": gaps, "gap_min_images": min_images, "groups_in_gaps": len(large)}


# --- multi-attribute runs: one sigmoid per attribute, labels (N, K) with -1 where a value is missing

def _group_f1(labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> float | None:
    """F1 within a group: about the positive class with two classes, so undefined in a group that has none;
    macro over the classes the group has with more."""
    if probs.shape[1] == 2:
        return float(f1_score(labels, predicted, zero_division=0)) if (labels == 1).any() else None
    return float(f1_score(labels, predicted, labels=np.unique(labels).tolist(), average="macro", zero_division=0))


def attribute_mean_keys() -> list[str]:
    """What a multi-attribute run averages over its attributes: every metric of the table and the base rate."""
    return [m.key for m in METRICS if m.compute is not None] + ["base_rate"]


def _attribute(labels: np.ndarray, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute k's observed labels and its probabilities as a two-class run's [1 - p, p]."""
    observed = labels[:, k] >= 0
    p = probs[observed, k].astype(np.float64)
    return labels[observed, k].astype(np.int64), np.stack([1 - p, p], axis=1)


def decide_attributes(probs: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
    """(N, K) 0/1: attribute k when its probability reaches thresholds[k] (None: 0.5 each)."""
    return (probs >= np.asarray(thresholds if thresholds is not None else 0.5)).astype(np.int64)


def choose_thresholds(labels: np.ndarray, probs: np.ndarray, rule: str) -> list[float]:
    """Each attribute's threshold by `rule` (choose_threshold), on its observed (validation) labels."""
    return [choose_threshold(*_attribute(labels, probs, k), rule) for k in range(labels.shape[1])]


def attribute_metrics(labels: np.ndarray, probs: np.ndarray, names: list[str],
                      thresholds: list[float] | None = None) -> dict:
    """classification_metrics of each attribute over the images that have its value, and at the
    top level the mean of each over the attributes (over those where it is defined): what a sweep compares."""
    per = {}
    for k, name in enumerate(names):
        y, p = _attribute(labels, probs, k)
        per[name] = classification_metrics(y, p, thresholds[k] if thresholds is not None else None) if len(y) else {
            **{m.key: None for m in METRICS if m.compute is not None}, "n_images": 0}
    means = {}
    for key in attribute_mean_keys():
        values = [m.get(key) for m in per.values()]
        values = [v for v in values if v is not None and np.isfinite(v)]
        means[key] = float(np.mean(values)) if values else None
    return {**means, "n_images": int(len(labels)), "attributes": per, "mean_over": "attributes"}
