"""A grid of runs on one split: `facetl sweep --grid lr=1e-3,1e-4 --grid strategy=... --out DIR`, through any
launcher, by one path (run.run_trials).

Each point (each fold of each point, with --folds K) is a Trial, an ordinary run folder DIR/POINT. The split is
made before any point starts, into the first point's folder, and every other point is given it (--split-file),
so the rows of results.md differ only by what the grid changes; with --folds, each point's folds are written
first, as `facetl train --folds` does.

DIR/jobs.json keeps each point's job id and state (JobBook). Rerunning the same command skips finished points
(metrics.json), waits for those SLURM still runs, and launches the rest again (failed, cancelled, killed), each
resuming from its last.pt. DIR/results.md and results.csv are rewritten as each point finishes, and
`facetl sweep --status DIR` shows the jobs and rebuilds them.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.experiments.folds import fold_trials
from facetl.experiments.grid import grid_configs
from facetl.experiments.jobs import JobBook, JobStatus
from facetl.experiments.launchers import observer_of
from facetl.experiments.results import read_run
from facetl.experiments.run import Launch, run_trials
from facetl.experiments.tables import summary, write_fold_results, write_results, write_sweep_results
from facetl.experiments.trial import Trial
from facetl.runfolder import prepare_run_folder

JOBS_FILE = "jobs.json"


def sweep(base: TrainConfig, grid: dict[str, list[str]], out: str | Path, launch: Launch | None = None) -> list[dict]:
    """Train every point of the grid through `launch` (in this process by default); returns the rows of
    results.csv (none with `launch.detach`, which returns once the jobs are submitted)."""
    return sweep_configs(grid_configs(base, grid, out), out, launch, base)


def sweep_configs(configs: list[tuple[str, TrainConfig]], out: str | Path, launch: Launch | None = None,
                  base: TrainConfig | None = None) -> list[dict]:
    """Train each (name, config) into OUT/name on one split, as a grid's points are (`base`: the shape every
    point shares, --folds and --split-by; the first point's by default)."""
    launch, base = launch or Launch(), base or configs[0][1]
    created = not Path(out).exists()
    try:
        out = prepare_run_folder(out)
        trials = fold_points(configs, out, launch) if base.folds else split_points(configs, out, launch)
    except FacetlError:
        if created:  # refused (bad data) before any run began: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    book = JobBook(out / JOBS_FILE, meta={"points": [t.name for t in trials], "grid": [n for n, _ in configs],
                                          "folds": base.folds or 0, "split_by": base.split_by,
                                          "select": base.select})
    run_trials(trials, book, launch, lambda: write_tables(out, book))
    if launch.detach:
        launch.log(f"submitted; follow them with: facetl sweep --status {out}")
        return []
    return write_tables(out, book)


def split_points(configs: list[tuple[str, TrainConfig]], out: Path, launch: Launch) -> list[Trial]:
    """The points, the first one's folder holding the split every other point is given."""
    first_name, first = configs[0]
    first_folder = out / first_name
    if first.split_file is None and not (first_folder / "split.csv").is_file():
        launch.log(f"making the split in {first_folder} (every point trains on it)")
        make_split(dataclasses.replace(first, out=str(first_folder)), first_folder, launch.log, launch.progress)
    shared = first.split_file or str(first_folder / "split.csv")
    return [Trial(name, dataclasses.replace(config, out=str(out / name),
                                            split_file=config.split_file if i == 0 else shared), out / name)
            for i, (name, config) in enumerate(configs)]


def make_split(config: TrainConfig, folder: Path, log, progress: bool) -> None:
    """split.csv (and the decoded images, in the cache every point reads) as `fit` would make them."""
    from facetl.data.prepare import prepare_data, read_samples
    from facetl.data.spec import data_spec
    from facetl.models.classifier import resolve_preprocessing

    folder.mkdir(parents=True, exist_ok=True)
    spec = data_spec(config)
    prepare_data(spec, read_samples(spec), resolve_preprocessing(config, log=lambda message: None), folder, log,
                 progress)


def fold_points(configs: list[tuple[str, TrainConfig]], out: Path, launch: Launch) -> list[Trial]:
    return [trial for name, config in configs
            for trial in fold_trials(dataclasses.replace(config, out=str(out / name)), out / name, launch.log,
                                     launch.progress, prefix=f"{name}/")]


def write_tables(out: Path, book: JobBook) -> list[dict]:
    """OUT/results.md and results.csv from the points finished so far, in grid order (nothing before the first);
    returns their rows."""
    names, folds = book.meta.get("points", []), book.meta.get("folds") or 0
    if not folds:
        rows = [read_run(out / name, name, strict=True) for name in names if (out / name / "metrics.json").is_file()]
        if rows:
            write_results(out, rows, book.meta.get("select") or "val_loss")
        return rows
    split_by, sweep_rows = book.meta.get("split_by"), []
    for point in book.meta.get("grid", []):
        fold_names = [n.split("/", 1)[1] for n in names if n.startswith(point + "/")]
        rows = [read_run(out / point / fold, fold, strict=True) for fold in fold_names
                if (out / point / fold / "metrics.json").is_file()]
        if rows:
            write_fold_results(out / point, rows, folds, split_by)
        if rows and len(rows) == len(fold_names):
            sweep_rows.append({"run": point, **summary(rows), "results": str(out / point / "results.md")})
    if sweep_rows:
        write_sweep_results(out, sweep_rows, folds, split_by)
    return sweep_rows


def sweep_status(out: Path) -> list[JobStatus]:
    """Each point's job as jobs.json and its launcher see it now; the results tables rebuilt. jobs.json itself is
    left to the sweep that launched the jobs (it may still be running and writing it)."""
    out = Path(out)
    if not (out / JOBS_FILE).is_file():
        raise FacetlError(f"{out} has no {JOBS_FILE}: not a sweep's folder")
    book = JobBook(out / JOBS_FILE, read_only=True)
    if not isinstance(book.meta.get("points", []), list) or not all(isinstance(n, str) for n in book.meta["points"]):
        raise FacetlError(f"{out / JOBS_FILE} is damaged (its points are not a list of names); the command that "
                          "started the sweep, run again, sets it aside and goes on")
    statuses = [book.get(n) or JobStatus(n, "", "not launched") for n in book.meta.get("points", [])]
    statuses = [dataclasses.replace(s, state="finished", detail=s.detail if s.state == "finished" else "metrics.json")
                if (out / s.name / "metrics.json").is_file() else s for s in statuses]
    write_tables(out, book)
    return refreshed(statuses)


def refreshed(statuses: list[JobStatus]) -> list[JobStatus]:
    """The active jobs' states as the launcher that gave each job id can tell from here (one ask per launcher);
    a job no observer can see keeps its recorded state (its launching process may still run it)."""
    asked: dict[type, tuple] = {}
    for number, status in enumerate(statuses):
        observer = observer_of(status.job_id) if status.active else None
        if observer is not None:
            asked.setdefault(type(observer), (observer, []))[1].append(number)
    statuses = list(statuses)
    for observer, numbers in asked.values():
        for number, fresh in zip(numbers, observer.refresh([statuses[n] for n in numbers])):
            statuses[number] = fresh
    return statuses
