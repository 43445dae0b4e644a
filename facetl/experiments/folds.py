"""K-fold cross-validation: `facetl train --folds K` (cross_validate) and `facetl sweep --folds K` (fold_trials).

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
from facetl.experiments.jobs import JobBook
from facetl.experiments.results import read_run
from facetl.experiments.run import Launch, run_trials
from facetl.experiments.tables import summary, write_fold_results
from facetl.experiments.trial import Trial
from facetl.models.classifier import resolve_preprocessing
from facetl.runfolder import prepare_run_folder
from facetl.train.fit import check_output_places, default_out

JOBS_FILE = "jobs.json"  # each fold's job id and state, as a sweep keeps its points'


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


def cross_validate(config: TrainConfig, launch: Launch | None = None) -> dict:
    """`facetl train --folds K`: train config.folds runs into OUT/fold-1..K through `launch` (in this process by
    default); write OUT/results.md and results.csv; return the mean row. Finished folds are kept on a rerun."""
    launch = launch or Launch()
    config.check()
    if not config.folds:
        raise FacetlError("cross_validate needs folds (2 or more)")
    out = Path(config.out or default_out(config))
    check_output_places(config, out, "--out" if config.out else "the default --out", run=False,
                        callbacks=launch.callbacks)
    trials = fold_trials(config, out, launch.log, launch.progress)
    book = JobBook(out / JOBS_FILE, meta={"points": [t.name for t in trials]})

    def write_tables() -> None:
        rows = [read_run(t.folder, t.name, strict=True) for t in trials if t.finished]
        if rows:
            write_fold_results(out, rows, config.folds, config.split_by)

    run_trials(trials, book, launch, write_tables)
    return summary([read_run(t.folder, t.name, strict=True) for t in trials])


def train_folds(config: TrainConfig, launch: Launch | None = None) -> Path:
    """What `facetl train --folds K` runs: cross_validate into --out (or the default run folder); returns the path
    of its results.md."""
    config.check()
    if not config.out:
        config = dataclasses.replace(config, out=default_out(config))
    cross_validate(config, launch)
    return Path(config.out) / "results.md"


def fold_trials(config: TrainConfig, out: Path, log=print, progress: bool = True, prefix: str = "") -> list[Trial]:
    """Each fold as a trial (named PREFIX + fold-i), its split.csv written into its folder (kept when a rerun finds
    one): ordinary runs that any launcher can train. Bad data is refused before OUT exists."""
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
        runs.append(Trial(prefix + name, dataclasses.replace(config, out=str(folder),
                                                              split_file=str(folder / "split.csv"), folds=None),
                          folder))
    return runs
