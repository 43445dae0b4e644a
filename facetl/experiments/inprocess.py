"""InProcessLauncher (`--launcher inprocess`, the default): each job in this process, one after another.

A job's `here` call runs (a sweep's point is `fit`, a tune worker is `run_worker`), so what it prints is the
command's own output and the first error ends the command with that error's own line, as the work done here
always did. Ctrl-C records the job it stopped as cancelled and goes on up. Its job ids are `inprocess-N`.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from facetl.experiments.jobs import Job, JobStatus
from facetl.experiments.launcher import register_launcher

JOB_ID_PREFIX = "inprocess-"


@register_launcher
@dataclass
class InProcessLauncher:
    name: ClassVar[str] = "inprocess"
    default: ClassVar[bool] = True
    detaches: ClassVar[bool] = False
    in_this_process: ClassVar[bool] = True

    @classmethod
    def add_arguments(cls, parser) -> None:
        pass  # nothing to choose

    @classmethod
    def implied_by(cls, args) -> bool:
        return False

    @classmethod
    def from_args(cls, args, out: Path) -> "InProcessLauncher":
        return cls()

    @classmethod
    def owns(cls, job_id: str) -> bool:
        return job_id.startswith(JOB_ID_PREFIX)

    @classmethod
    def observer(cls) -> None:
        return None  # only the process running them knows

    def logs(self) -> None:
        return None  # its jobs print here

    def launch(self, jobs: list[Job], on_change: Callable[[JobStatus], None] = lambda status: None
               ) -> list[JobStatus]:
        """Run every job here, in order; return their statuses once all have ended."""
        statuses = []
        for number, job in enumerate(jobs, start=1):
            status = JobStatus(job.name, f"{JOB_ID_PREFIX}{number}", "running", folder=str(job.folder))
            on_change(status)
            statuses.append(self._run(job, status, on_change))
        return statuses

    def _run(self, job: Job, status: JobStatus, on_change) -> JobStatus:
        try:
            code = _call(job)
        except KeyboardInterrupt:
            on_change(_ended(job, status, "cancelled", "interrupted"))
            raise
        except BaseException as exc:  # its own error ends the command, as work done here always did
            on_change(_ended(job, status, "failed", str(exc).splitlines()[0][:200] if str(exc) else
                             type(exc).__name__))
            raise
        ended = _ended(job, status, "finished" if code == 0 else "failed", f"exit code {code}")
        on_change(ended)
        return ended

    def wait(self, statuses: list[JobStatus], on_change=lambda status: None) -> list[JobStatus]:
        return statuses  # launch() returned when every job had ended

    def refresh(self, statuses: list[JobStatus]) -> list[JobStatus]:
        # a job still marked active outlived the command that ran it: not running now
        return [s if not s.active else JobStatus(s.name, s.job_id, "killed", s.log, "its command ended", s.folder)
                for s in statuses]


def _call(job: Job) -> int:
    if job.here is not None:
        job.here()
        return 0
    if callable(job.command):
        job.command()
        return 0
    return subprocess.call([str(a) for a in job.command])


def _ended(job: Job, status: JobStatus, state: str, detail: str) -> JobStatus:
    # no exit record in its folder: no other process ever asks how a job here ended
    return JobStatus(job.name, status.job_id, state, status.log, detail, status.folder)
