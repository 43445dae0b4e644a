"""DryRunLauncher (`--launcher dry-run`): says each job's command line and runs none of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from facetl.experiments.jobs import Job, JobStatus
from facetl.experiments.launcher import register_launcher


@register_launcher
@dataclass
class DryRunLauncher:
    name: ClassVar[str] = "dry-run"
    default: ClassVar[bool] = False
    detaches: ClassVar[bool] = False
    in_this_process: ClassVar[bool] = False

    @classmethod
    def add_arguments(cls, parser) -> None:
        pass

    @classmethod
    def implied_by(cls, args) -> bool:
        return False

    @classmethod
    def from_args(cls, args, out: Path) -> "DryRunLauncher":
        return cls()

    @classmethod
    def owns(cls, job_id: str) -> bool:
        return job_id.startswith("dry-run-")

    @classmethod
    def observer(cls) -> None:
        return None

    def logs(self) -> None:
        return None

    def launch(self, jobs: list[Job], on_change=lambda status: None) -> list[JobStatus]:
        statuses = []
        for number, job in enumerate(jobs, start=1):
            command = job.command if isinstance(job.command, list) else [repr(job.command)]
            print(" ".join(map(str, command)))
            statuses.append(JobStatus(job.name, f"dry-run-{number}", "cancelled", "", "dry run", str(job.folder)))
            on_change(statuses[-1])
        return statuses

    def wait(self, statuses: list[JobStatus], on_change=lambda status: None) -> list[JobStatus]:
        return statuses

    def refresh(self, statuses: list[JobStatus]) -> list[JobStatus]:
        return statuses
