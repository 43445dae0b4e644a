"""The Launcher protocol and the launcher registry: `@register_launcher` adds a launcher class under its `name`.

A launcher runs a list of jobs (facetl.experiments.jobs.Job) and says how each went (JobStatus). Each one is a
file of its own (inprocess.py, local.py, slurm.py) that owns everything about itself: its flags, its checks of
them, and the form of its job ids. Nothing outside a launcher's file names one; `launchers.py` imports them so
they register, as models/factory.py imports the backbones. This file only keeps the table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Protocol

from facetl.experiments.jobs import Job, JobStatus

OnChange = Callable[[JobStatus], None]


class Launcher(Protocol):
    name: ClassVar[str]            # what --launcher calls it
    default: ClassVar[bool]        # chosen when no --launcher is given and no flag implies another
    detaches: ClassVar[bool]       # its jobs outlive this command: --detach may return once they are submitted
    in_this_process: ClassVar[bool]  # its jobs' output is this command's own (nothing to follow from outside)

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Its own flags (the shared --launcher and --parallel are the registry's)."""

    @classmethod
    def implied_by(cls, args) -> bool:
        """Whether flags given without --launcher ask for this launcher (e.g. --parallel 2: local processes)."""

    @classmethod
    def from_args(cls, args, out: Path) -> "Launcher":
        """The launcher its flags describe, checked (one FacetlError line), for jobs whose files go under `out`."""

    @classmethod
    def owns(cls, job_id: str) -> bool:
        """Whether `job_id` is one this kind of launcher gave."""

    @classmethod
    def observer(cls) -> "Launcher | None":
        """A launcher that can tell the state of its jobs from another process (`sweep --status`), or None."""

    def launch(self, jobs: list[Job], on_change: OnChange) -> list[JobStatus]: ...

    def wait(self, statuses: list[JobStatus], on_change: OnChange) -> list[JobStatus]: ...

    def refresh(self, statuses: list[JobStatus]) -> list[JobStatus]: ...

    def logs(self) -> Path | None:
        """Where its own logs go, besides each job's folder (None: nowhere else)."""


_LAUNCHERS: dict[str, type] = {}


def register_launcher(cls: type) -> type:
    if cls.name in _LAUNCHERS:
        raise ValueError(f"launcher {cls.name!r} is registered twice")
    _LAUNCHERS[cls.name] = cls
    return cls


def registered() -> dict[str, type]:
    return dict(_LAUNCHERS)
