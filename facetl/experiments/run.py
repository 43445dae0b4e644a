"""One way to run trials, whatever the launcher: `run_trials(trials, book, launch)`.

Finished trials (metrics.json) are skipped; one that a launcher still runs (a SLURM job from an earlier, detached
command) is waited for; the rest are launched as jobs, each resuming from its last.pt. `book` (a JobBook, the
experiment's jobs.json) keeps each trial's job id and state, and `on_end()` hears each time one ends (a sweep
rewrites its results tables then).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from facetl.errors import FacetlError
from facetl.experiments.inprocess import InProcessLauncher
from facetl.experiments.jobs import JobBook, JobStatus
from facetl.experiments.launcher import Launcher
from facetl.experiments.trial import Trial


@dataclass(frozen=True)
class Launch:
    """How an experiment's trials run: through which launcher, with how many processes each, and what to show."""

    launcher: Launcher = field(default_factory=InProcessLauncher)
    nproc: int = 1                    # processes per trial (torchrun inside its job)
    detach: bool = False              # return once submitted, for `--status` to follow (detaching launchers)
    progress: bool = True             # progress bars for trials trained in this process
    callbacks: Sequence = ()          # fit's callbacks for trials trained in this process (trackers, pictures)
    tracking: dict | None = None      # the tracking settings a trial trained in a process of its own is given
    log: Callable[[str], None] = print


def run_trials(trials: list[Trial], book: JobBook, launch: Launch, on_end: Callable[[], None] = lambda: None
               ) -> list[JobStatus]:
    """Train every trial that has not finished through `launch.launcher`; returns their statuses (pending ones
    with `launch.detach`). Trials that did not finish are one FacetlError line at the end."""
    log, launcher = launch.log, launch.launcher
    waiting, jobs = [], []
    for number, trial in enumerate(trials, start=1):
        now = _still_running(trial, book, launcher)
        if trial.finished:
            log(f"[{number}/{len(trials)}] {trial.name}: finished earlier")
        elif now is not None:
            log(f"[{number}/{len(trials)}] {trial.name}: still {now.state} as job {now.job_id}")
            waiting.append(now)
        else:
            if launcher.in_this_process:
                log(f"[{number}/{len(trials)}] {trial.name}")
            jobs.append(trial.job(launch))

    def changed(status: JobStatus) -> None:
        book.update(status)
        if not launcher.in_this_process:  # here, the trial's own output says it
            log(f"{status.name}: {status.state} (job {status.job_id}"
                f"{'; ' + status.detail if status.detail else ''})")
        if not status.active:
            on_end()

    if jobs and not launcher.in_this_process:
        log(f"launching {len(jobs)} of {len(trials)} points ({launcher.name})")
    statuses = launcher.launch(jobs, changed) if jobs else []
    if launch.detach:
        return statuses + waiting
    statuses = launcher.wait(statuses + waiting, changed)
    on_end()
    _refuse_unfinished(trials, book)
    return statuses


def _still_running(trial: Trial, book: JobBook, launcher: Launcher) -> JobStatus | None:
    """The trial's job as this launcher sees it now, when the book has one of its jobs still active; the book
    learns of a trial found finished."""
    before = book.get(trial.name)
    if trial.finished:
        if before is None or before.state != "finished":
            book.update(JobStatus(trial.name, before.job_id if before else "", "finished",
                                  before.log if before else "", "metrics.json", str(trial.folder)))
        return None
    if before is None or not before.active or not type(launcher).owns(before.job_id):
        return None
    now = launcher.refresh([before])[0]
    return now if now.active else None


def _refuse_unfinished(trials: list[Trial], book: JobBook) -> None:
    unfinished = [t for t in trials if not t.finished]
    if unfinished:
        first = book.get(unfinished[0].name)
        raise FacetlError(f"{len(unfinished)} of {len(trials)} points did not finish, e.g. {unfinished[0].name} "
                          f"({first.state if first else 'not launched'}; log {first.log if first else '-'}); "
                          f"the same command launches them again")
