"""An experiment's results tables: a sweep's (a row per point), cross-validation's (a row per fold, with mean ±
std) and a cross-validated sweep's (mean ± std per point), each as results.md and results.csv.

The rows are facetl.experiments.results.read_run's; the best point is the metric table's `best_of` by the
selection metric the runs chose their epochs by (--select), and the table says which metric that was.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facetl.evaluate.metrics import best_of, best_words, summary_metrics
from facetl.experiments.results import cell
from facetl.runfolder import atomic_write_csv, atomic_write_text
from facetl.tables import markdown_table

# a sweep's results.csv: run, the metrics that sum a run up (the metric table's), then these
COLUMNS_AFTER_METRICS = ["val_loss", "val_acc", "train_seconds", "trainable_params", "pretraining", "recipe",
                         "report"]
HEADERS_AFTER_METRICS = ["val loss", "val acc", "train s", "trainable params", "pretraining",
                         "optimiser, peak LR, schedule, epochs"]


def columns() -> list[str]:
    return ["run", *(m.key for m in summary_metrics()), *COLUMNS_AFTER_METRICS]


def write_results(out: Path, rows: list[dict], select: str = "val_loss") -> None:
    """A sweep's results.csv and results.md, the best point (by `select`) marked."""
    best = best_of(rows, select)
    atomic_write_csv(out / "results.csv", columns() + ["best"],
                     [[r.get(c) for c in columns()] + [i == best] for i, r in enumerate(rows)])
    atomic_write_text(out / "results.md", results_table(rows, best, select))


def results_table(rows: list[dict], best: int | None, select: str) -> str:
    metrics = summary_metrics()
    header = ["run", *(m.label for m in metrics), *HEADERS_AFTER_METRICS]
    lines = markdown_table(header, [[f"**{r['run']}** (best)" if i == best else r["run"]]
                                     + [m.format(r[m.key]) for m in metrics]
                                     + [cell(r[c], c) for c in COLUMNS_AFTER_METRICS[:-1]] for i, r in enumerate(rows)])
    lines += ["", f"Metrics on each run's test split; 'best' is {best_words(select)} at the selected epoch, the "
              "metric each run selected its epoch by (the test split does not choose).", ""]
    if any(r.get("attributes") for r in rows):
        lines[-1:] = ["Multi-attribute runs: each metric is the mean over the attributes (metrics.json has each "
                      "attribute's), and val acc is over every observed (image, attribute) label.", ""]
    lines += [f"- {r['run']}: {r['report']}" for r in rows]
    return "\n".join(lines) + "\n"


def averaged() -> list[tuple[str, str]]:
    """What is averaged over folds, as (results.csv column, results.md header): the metrics that sum a run up
    (the metric table's) and the validation accuracy at the selected epoch."""
    return [(m.key, m.label) for m in summary_metrics()] + [("val_acc", "val acc")]


def summary(rows: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1) over folds of every metric; None where a fold has none."""
    result = {"folds": len(rows)}
    for key, _ in averaged():
        values = [r[key] for r in rows]
        if any(v is None for v in values):
            result[key], result[key + "_std"] = None, None
            continue
        result[key] = float(np.mean(values))
        result[key + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return result


def _metrics_shown(rows: list[dict]) -> list[tuple[str, str]]:
    """What some fold has (runs from before balanced accuracy have none)."""
    return [(k, h) for k, h in averaged() if any(r.get(k) is not None for r in rows)]


def _mean_std(mean, std) -> str:
    return "n/a" if mean is None else f"{mean:.4f} ± {std:.4f}"


def write_fold_results(out: Path, rows: list[dict], folds: int, split_by: str | None) -> None:
    """Cross-validation's results.csv and results.md: every fold, and the mean ± std of each metric."""
    shown, total = _metrics_shown(rows), summary(rows)
    columns = ["run"] + [k for k, _ in shown] + ["test_images", "train_seconds", "trainable_params", "pretraining",
                                                 "report"]
    csv_rows = [[r.get(c) for c in columns] for r in rows]
    csv_rows.append(["mean"] + [total[k] for k, _ in shown] + [""] * 5)
    csv_rows.append(["std"] + [total[k + "_std"] for k, _ in shown] + [""] * 5)
    atomic_write_csv(out / "results.csv", columns, csv_rows)

    header = ["fold"] + [h for _, h in shown] + ["test images", "train s"]
    cells = [[r["run"]] + [cell(r[k]) for k, _ in shown]
             + [cell(r["test_images"]), cell(r["train_seconds"], "train_seconds")] for r in rows]
    cells.append([f"**mean ± std** ({len(rows)} folds)"]
                 + [_mean_std(total[k], total[k + "_std"]) for k, _ in shown] + ["", ""])
    lines = [f"# {folds}-fold cross-validation" + (f", split by {split_by}" if split_by else ""), "",
             *markdown_table(header, cells)]
    lines += ["", "Metrics on each fold's test split (every image is in exactly one fold's test split); std is the "
              "sample standard deviation over folds. "
              + (f"Every {split_by} group lies wholly in one split of each fold." if split_by else
                 "Without --split-by, files of one person can be in both training and test of a fold."), ""]
    lines += [f"- {r['run']}: {r['report']}" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def write_sweep_results(out: Path, rows: list[dict], folds: int, split_by: str | None) -> None:
    """A cross-validated sweep's results.csv and results.md: mean ± std per point."""
    shown = _metrics_shown(rows)
    columns = ["run"] + [c for k, _ in shown for c in (k, k + "_std")] + ["results"]
    atomic_write_csv(out / "results.csv", columns, [[r.get(c) for c in columns] for r in rows])
    header = ["run"] + [h for _, h in shown]
    lines = [f"# sweep, {folds}-fold cross-validation per point" + (f", split by {split_by}" if split_by else ""), "",
             *markdown_table(header, [[r["run"]] + [_mean_std(r[k], r[k + "_std"]) for k, _ in shown] for r in rows])]
    lines += ["", "Mean ± sample std over each point's folds, on the folds' test splits; every point uses the same "
              "folds when the grid does not change the data.", ""]
    lines += [f"- {r['run']}: {r['results']}" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
