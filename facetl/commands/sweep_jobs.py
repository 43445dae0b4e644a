"""A sweep's points as jobs: `facetl sweep ... --launcher local --parallel N` or `--launcher slurm`.

Each point (each fold of each point, with --folds K) is an ordinary run that a fresh process trains with
`python -m facetl train --config POINT/config.yaml --out POINT`, or `--resume POINT` where a killed one left
last.pt. The split is made before any point starts, into the first point's folder, and every other point is
given it (--split-file), as in the sweep that trains one point after another; with --folds, each point's folds
are written first, as `facetl train --folds` does.

OUT/jobs.json keeps each point's job id and state (facetl.launch.JobBook). Rerunning the same command skips
finished points (metrics.json), waits for those SLURM still runs, and launches the rest again (failed,
cancelled, killed), each resuming from its last.pt. OUT/results.md and results.csv are rewritten as each
point finishes, and `facetl sweep --status OUT` shows the jobs and rebuilds them.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from facetl.commands.folds import fold_runs, summary, write_fold_results, write_sweep_results
from facetl.commands.sweep import grid_configs, write_results
from facetl.config import TrainConfig, dump_yaml, with_absolute_paths
from facetl.errors import FacetlError
from facetl.evaluate.results import run_row
from facetl.launch import Job, JobBook, JobStatus
from facetl.runfolder import atomic_write_text, prepare_run_folder

JOBS_FILE = "jobs.json"


@dataclass(frozen=True)
class Point:
    name: str        # "lr-0.001", or "lr-0.001/fold-2" with --folds
    folder: Path
    config: TrainConfig


def finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def launch_sweep(base: TrainConfig, grid: dict[str, list[str]], out: str | Path, launcher, nproc: int = 1,
                 detach: bool = False, log=print, progress: bool = True, tracking: dict | None = None
                 ) -> list[JobStatus]:
    """Train every point of the grid through `launcher` (facetl.launch); write OUT/results.md as they finish.
    `detach`: return once submitted (SLURM), for `--status` to follow. Points that did not finish are one
    FacetlError line at the end (the others' results are written)."""
    configs = grid_configs(base, grid, out)
    created = not Path(out).exists()
    try:
        out = prepare_run_folder(out)
        points = fold_points(configs, out, log, progress) if base.folds else split_points(configs, out, log,
                                                                                           progress)
    except FacetlError:
        if created:  # refused (bad data) before any run began: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    book = JobBook(out / JOBS_FILE, meta={"points": [p.name for p in points], "grid": [n for n, _ in configs],
                                          "folds": base.folds or 0, "split_by": base.split_by})
    waiting, jobs = [], []
    for number, point in enumerate(points, start=1):
        before = book.get(point.name)
        if finished(point.folder):
            log(f"[{number}/{len(points)}] {point.name}: finished earlier")
            if before is None or before.state != "finished":
                book.update(JobStatus(point.name, before.job_id if before else "", "finished",
                                      before.log if before else "", "metrics.json", str(point.folder)))
            continue
        now = launcher.refresh([before])[0] if before is not None and before.active and \
            before.job_id.startswith("local-") == (launcher.name == "local") else None
        if now is not None and now.active:
            log(f"[{number}/{len(points)}] {point.name}: still {now.state} as job {now.job_id}")
            waiting.append(now)
        else:
            jobs.append(Job(point.name, point_command(point, nproc, tracking), point.folder, nproc))

    def changed(status: JobStatus) -> None:
        book.update(status)
        log(f"{status.name}: {status.state} (job {status.job_id}{'; ' + status.detail if status.detail else ''})")
        if not status.active:
            write_tables(out, book)

    if jobs:
        log(f"launching {len(jobs)} of {len(points)} points ({launcher.name})")
    statuses = launcher.launch(jobs, changed) if jobs else []
    if detach:
        log(f"submitted; follow them with: facetl sweep --status {out}")
        return statuses + waiting
    statuses = launcher.wait(statuses + waiting, changed)
    write_tables(out, book)
    unfinished = [p for p in points if not finished(p.folder)]
    if unfinished:
        first = book.get(unfinished[0].name)
        raise FacetlError(f"{len(unfinished)} of {len(points)} points did not finish, e.g. {unfinished[0].name} "
                          f"({first.state if first else 'not launched'}; log {first.log if first else '-'}); "
                          f"the same command launches them again")
    return statuses


def split_points(configs: list[tuple[str, TrainConfig]], out: Path, log, progress: bool) -> list[Point]:
    """The points, the first one's folder holding the split every other point is given."""
    first_name, first = configs[0]
    first_folder = out / first_name
    if first.split_file is None and not (first_folder / "split.csv").is_file():
        log(f"making the split in {first_folder} (every point trains on it)")
        make_split(dataclasses.replace(first, out=str(first_folder)), first_folder, log, progress)
    shared = first.split_file or str(first_folder / "split.csv")
    return [Point(name, out / name, dataclasses.replace(config, out=str(out / name),
                                                        split_file=config.split_file if i == 0 else shared))
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


def fold_points(configs: list[tuple[str, TrainConfig]], out: Path, log, progress: bool) -> list[Point]:
    return [Point(f"{name}/{fold}", folder, fold_config) for name, config in configs
            for fold, folder, fold_config in fold_runs(dataclasses.replace(config, out=str(out / name)),
                                                       out / name, log, progress)]


def point_command(point: Point, nproc: int, tracking: dict | None = None) -> list[str]:
    """`facetl train` for the point, as a fresh process: resumed where a killed run left last.pt. Its config.yaml
    carries the sweep's tracking settings (`tracking`, facetl.track.settings) beside the run's config."""
    command = [sys.executable, "-m", "facetl", "train"]
    if (point.folder / "last.pt").is_file():
        command += ["--resume", str(point.folder)]
    else:
        point.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(point.folder / "config.yaml", dump_yaml(with_absolute_paths(point.config), tracking))
        command += ["--config", str(point.folder / "config.yaml"), "--out", str(point.folder)]
    return command + (["--nproc", str(nproc)] if nproc > 1 else [])


def write_tables(out: Path, book: JobBook) -> None:
    """OUT/results.md and results.csv from the points finished so far, in grid order (nothing before the first)."""
    names, folds = book.meta.get("points", []), book.meta.get("folds") or 0
    if not folds:
        rows = [run_row(name, out / name) for name in names if finished(out / name)]
        if rows:
            write_results(out, rows)
        return
    shape = TrainConfig(folds=folds, split_by=book.meta.get("split_by"))
    sweep_rows = []
    for point in book.meta.get("grid", []):
        fold_names = [n.split("/", 1)[1] for n in names if n.startswith(point + "/")]
        rows = [run_row(fold, out / point / fold) for fold in fold_names if finished(out / point / fold)]
        if rows:
            write_fold_results(out / point, rows, shape)
        if rows and len(rows) == len(fold_names):
            sweep_rows.append({"run": point, **summary(rows), "results": str(out / point / "results.md")})
    if sweep_rows:
        write_sweep_results(out, sweep_rows, shape)


def sweep_status(out: Path) -> list[JobStatus]:
    """Each point's job as jobs.json and SLURM see it now; the results tables rebuilt. jobs.json itself is left
    to the sweep that launched the jobs (it may still be running and writing it)."""
    out = Path(out)
    if not (out / JOBS_FILE).is_file():
        raise FacetlError(f"{out} has no {JOBS_FILE}: not a sweep started with --launcher")
    book = JobBook(out / JOBS_FILE, read_only=True)
    if not isinstance(book.meta.get("points", []), list) or not all(isinstance(n, str) for n in book.meta["points"]):
        raise FacetlError(f"{out / JOBS_FILE} is damaged (its points are not a list of names); the command that "
                          "started the sweep, run again, sets it aside and goes on")
    statuses = [book.get(n) or JobStatus(n, "", "not launched") for n in book.meta.get("points", [])]
    statuses = [dataclasses.replace(s, state="finished", detail=s.detail if s.state == "finished" else "metrics.json")
                if finished(out / s.name) else s for s in statuses]
    slurm = [s for s in statuses if s.active and not s.job_id.startswith("local-")]
    if slurm:  # a local job's state is its launcher's to tell (that process may still be running it)
        from facetl.launch import SlurmLauncher

        fresh = dict(zip([s.name for s in slurm], SlurmLauncher().refresh(slurm)))
        statuses = [fresh.get(s.name, s) for s in statuses]
    write_tables(out, book)
    return statuses
