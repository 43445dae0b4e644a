"""K-fold cross-validation: `facetl train --folds K` and `facetl sweep --folds K`.

The data is cut into K folds (with --split-by, every group in one fold: StratifiedGroupKFold; else
StratifiedKFold over distinct files), seeded. Fold i is the test split of run OUT/fold-i, and its
validation split is carved from the other folds. Each fold's split.csv is written into its folder before
`fit` runs, so a fold is an ordinary run folder (evaluate, predict and --resume work on it) and training
does not know it is a fold. OUT/results.md and results.csv list every fold and the mean ± std of each
metric. Rerunning the command skips finished folds and resumes a killed one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.config import TrainConfig
from facetl.data.prepare import cache_folder, open_store_together, read_samples, write_split
from facetl.data.samples import Samples, stratified_limit
from facetl.data.spec import data_spec
from facetl.data.split import apply_duplicate_policy, group_counts, make_folds
from facetl.errors import FacetlError
from facetl.evaluate.metrics import summary_metrics
from facetl.evaluate.results import cell, run_row
from facetl.models.classifier import resolve_preprocessing
from facetl.runfolder import atomic_write_csv, atomic_write_text, prepare_run_folder
from facetl.commands.sweep import grid_configs
from facetl.train.fit import check_output_places, default_out, fit


def averaged() -> list[tuple[str, str]]:
    """What is averaged over folds, as (results.csv column, results.md header): the metrics that sum a run up
    (the metric table's) and the validation accuracy at the selected epoch."""
    return [(m.key, m.label) for m in summary_metrics()] + [("val_acc", "val acc")]


@dataclass
class Folds:
    samples: Samples               # the usable files (readable, duplicate policy applied), limited
    assignments: list[np.ndarray]  # per fold: 'train' | 'val' | 'test' per file


def make_fold_splits(config: TrainConfig, log=print, progress: bool = True) -> Folds:
    """The K splits of `config`'s data. Decoding through the same store as `fit` knows which files are
    readable and which are identical; the cache keeps it for the folds' runs."""
    samples = stratified_limit(read_samples(data_spec(config)), config.limit, config.seed)
    preprocessing = resolve_preprocessing(config, log=lambda message: None)  # no network built to learn it
    cache_dir = cache_folder(data_spec(config))
    store = open_store_together(samples.files(), preprocessing, cache_dir if config.cache else None, config.workers,
                                progress, None)
    keep = store.readable()
    duplicate_keep, note = apply_duplicate_policy(samples, store.hashes, config.duplicates)
    if note:
        log(note)
    index = np.flatnonzero(keep & duplicate_keep)
    if store.errors:
        log(f"warning: {len(store.errors)} unreadable image(s) left out of every fold (e.g. "
            f"{samples.paths[min(store.errors)]}: {store.errors[min(store.errors)]})")
    usable = samples.take(index)
    if len(np.unique(usable.labels)) < 2:
        raise FacetlError("fewer than two classes have readable images; nothing to learn")
    train_f, val_f, _ = config.split
    assignments = make_folds(usable, [store.hashes[i] for i in index], config.folds, val_f / (train_f + val_f),
                             config.seed)
    return Folds(usable, assignments)


def cross_validate(config: TrainConfig, progress: bool = True, log=print, callbacks=()) -> dict:
    """Train config.folds runs into OUT/fold-1..K; write OUT/results.md and results.csv; return the mean row."""
    config.check()
    if not config.folds:
        raise FacetlError("cross_validate needs folds (2 or more)")
    out = Path(config.out or default_out(config))
    check_output_places(config, out, "--out" if config.out else "the default --out", run=False, callbacks=callbacks)
    rows = []
    for name, folder, fold_config in fold_runs(config, out, log, progress):
        if (folder / "metrics.json").is_file():
            log(f"  finished earlier: {folder / 'metrics.json'}")
        else:
            fit(fold_config, resume=(folder / "last.pt").is_file(), progress=progress, callbacks=callbacks)
        rows.append(run_row(name, folder))
        write_fold_results(out, rows, config)
    return summary(rows)


def fold_runs(config: TrainConfig, out: Path, log=print, progress: bool = True) -> list[tuple[str, Path, TrainConfig]]:
    """Each fold's (name, folder, config), its split.csv written into its folder (kept when a rerun finds one):
    ordinary runs that a launcher can start as `facetl train`. Bad data is refused before OUT exists."""
    folds = make_fold_splits(config, log, progress)
    out = prepare_run_folder(out)
    runs = []
    for number, assignment in enumerate(folds.assignments, start=1):
        name = f"fold-{number}"
        folder = out / name
        sizes = ", ".join(f"{s} {int((assignment == s).sum())}" for s in ("train", "val", "test"))
        groups = f"; {group_counts(folds.samples, assignment)}" if folds.samples.groups is not None else ""
        log(f"[{name} of {len(folds.assignments)}] {sizes} images{groups}")
        if not (folder / "split.csv").is_file():  # a rerun keeps the split a fold already trained on
            folder.mkdir(parents=True, exist_ok=True)
            write_split(folder, folds.samples, assignment, config.seed, config.split, fold=number,
                        folds=config.folds, split_by=config.split_by)
        runs.append((name, folder, dataclasses.replace(config, out=str(folder), split_file=str(folder / "split.csv"),
                                                       folds=None)))
    return runs


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


def write_fold_results(out: Path, rows: list[dict], config: TrainConfig) -> None:
    shown = _metrics_shown(rows)
    columns = ["run"] + [k for k, _ in shown] + ["test_images", "train_seconds", "trainable_params", "pretraining",
                                                 "report"]
    total = summary(rows)
    csv_rows = [[r.get(c) for c in columns] for r in rows]
    csv_rows.append(["mean"] + [total[k] for k, _ in shown] + [""] * 5)
    csv_rows.append(["std"] + [total[k + "_std"] for k, _ in shown] + [""] * 5)
    atomic_write_csv(out / "results.csv", columns, csv_rows)

    header = ["fold"] + [h for _, h in shown] + ["test images", "train s"]
    lines = [f"# {config.folds}-fold cross-validation" + (f", split by {config.split_by}" if config.split_by else ""),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([r["run"]] + [cell(r[k]) for k, _ in shown]
                                       + [cell(r["test_images"]), cell(r["train_seconds"], "train_seconds")]) + " |")
    lines.append("| " + " | ".join([f"**mean ± std** ({len(rows)} folds)"]
                                   + [_mean_std(total[k], total[k + "_std"]) for k, _ in shown] + ["", ""]) + " |")
    lines += ["", "Metrics on each fold's test split (every image is in exactly one fold's test split); std is the "
              "sample standard deviation over folds. "
              + (f"Every {config.split_by} group lies wholly in one split of each fold." if config.split_by else
                 "Without --split-by, files of one person can be in both training and test of a fold."), ""]
    lines += [f"- {r['run']}: {r['report']}" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def sweep_folds(base: TrainConfig, grid: dict[str, list[str]], out: str | Path, progress: bool = True, log=print,
                callbacks=()) -> list[dict]:
    """Every grid point cross-validated into OUT/POINT/fold-1..K; OUT/results.md has mean ± std per point."""
    configs = grid_configs(base, grid, out)
    out = Path(out)
    rows = []
    for number, (name, config) in enumerate(configs, start=1):
        log(f"[{number}/{len(configs)}] {name}")
        total = cross_validate(dataclasses.replace(config, out=str(out / name)), progress, log, callbacks)
        rows.append({"run": name, **total, "results": str(out / name / "results.md")})
        write_sweep_results(out, rows, base)
    return rows


def write_sweep_results(out: Path, rows: list[dict], base: TrainConfig) -> None:
    shown = _metrics_shown(rows)
    columns = ["run"] + [c for k, _ in shown for c in (k, k + "_std")] + ["results"]
    atomic_write_csv(out / "results.csv", columns, [[r.get(c) for c in columns] for r in rows])
    header = ["run"] + [h for _, h in shown]
    lines = [f"# sweep, {base.folds}-fold cross-validation per point"
             + (f", split by {base.split_by}" if base.split_by else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([r["run"]] + [_mean_std(r[k], r[k + "_std"]) for k, _ in shown]) + " |")
    lines += ["", "Mean ± sample std over each point's folds, on the folds' test splits; every point uses the same "
              "folds when the grid does not change the data.", ""]
    lines += [f"- {r['run']}: {r['results']}" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
