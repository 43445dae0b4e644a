"""What a launcher runs (Job), what it says about it (JobStatus), and the file that remembers it (JobBook).

A job is `Job(name, command, folder, nproc=1, here=None)`: `command` is an argv list (run as a process) or a
callable taking no arguments (run in a fresh process; on SLURM pickled by submitit, so a module-level function);
`here` is the same work as a call in this process, for the in-process launcher (without one, it runs `command`);
`folder` is where the job's own files go (its exit record, job.json; locally its output, launch.log). A job's
state is a `JobStatus(name, job_id, state, log, detail)`, `state` one of STATES: pending, running, finished
(exit 0), failed, cancelled (scancel, Ctrl-C), timeout, killed (ended without saying how).

Every launcher has the same three calls (facetl.experiments.launcher):

    statuses = launcher.launch(jobs, on_change)   # in this process or local: returns when every job has ended;
                                                  # slurm: submits one array and returns them pending
    statuses = launcher.wait(statuses, on_change) # until none is pending or running
    statuses = launcher.refresh(statuses)         # the state now (after this process was restarted, too)

`on_change(status)` hears of each job's every change of state (a sweep writes its results table as points
finish); `JobBook(path)` keeps the latest status of each job in a JSON file (a sweep's jobs.json), so a rerun or
`--status` knows them.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from facetl.errors import FacetlError
from facetl.runfolder import atomic_write_json

# the states a job can be in; ACTIVE ones may still change without anyone launching it again
STATES = ("pending", "running", "finished", "failed", "cancelled", "timeout", "killed")
ACTIVE = ("pending", "running")
EXIT_FILE = "job.json"  # written by the job itself when its command ends: its id and exit code


@dataclass(frozen=True)
class Job:
    name: str
    command: Union[list[str], Callable[[], object]]
    folder: Path
    nproc: int = 1  # processes the command starts (torchrun): a local slot gives it that many GPUs
    here: Optional[Callable[[], object]] = None  # the same work as a call in this process (in-process launcher)


@dataclass(frozen=True)
class JobStatus:
    name: str
    job_id: str
    state: str
    log: str = ""      # where its output is
    detail: str = ""   # an exit code, a signal, a reason
    folder: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def read_exit(folder: Path, job_id: str) -> int | None:
    """The exit code `job_id` recorded in folder/job.json, or None (not ended, or another job's record)."""
    try:
        record = json.loads((Path(folder) / EXIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record.get("returncode") if isinstance(record, dict) and record.get("job_id") == job_id else None


def write_exit(folder: Path, job_id: str, returncode: int) -> None:
    atomic_write_json(Path(folder) / EXIT_FILE, {"job_id": job_id, "returncode": returncode})


def state_of_exit(returncode: int) -> str:
    # 130/-2: Ctrl-C (facetl's own exit code for it, or the signal); -15/-9: terminated or killed
    return "finished" if returncode == 0 else "cancelled" if returncode in (130, -2, -15) else \
        "killed" if returncode == -9 else "failed"


class JobBook:
    """The latest status of each job, kept in a JSON file ({"meta": {...}, "jobs": {name: status}}), rewritten
    whole at each change (atomically: a reader never sees half a file). `meta` is the caller's (what a sweep
    needs to rebuild its table).

    A damaged file (cut short, not that shape, a job without its fields) is read as knowing no job: it is set
    aside as NAME.damaged (never deleted), with one warning, and the caller goes on from what its folders show.
    `read_only` books (--status) do not move it: they are one line saying so instead."""

    def __init__(self, path: str | Path, meta: dict | None = None, read_only: bool = False):
        self.path = Path(path)
        try:
            stored = _parse(self.path)
        except ValueError as exc:
            if read_only:
                raise FacetlError(f"{self.path} is damaged ({exc}); the command that started these jobs, run "
                                  "again, sets it aside and goes on") from None
            kept = _set_aside(self.path)
            print(f"warning: {self.path} is damaged ({exc}); kept as {kept.name}, and its jobs are unknown: "
                  "finished ones are kept, the rest start again", file=sys.stderr, flush=True)
            stored = {"meta": {}, "jobs": {}}
        self.meta = {**stored["meta"], **(meta or {})}
        self.jobs = stored["jobs"]

    def get(self, name: str) -> JobStatus | None:
        return self.jobs.get(name)

    def update(self, status: JobStatus) -> None:
        self.jobs[status.name] = status
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"meta": self.meta,
                                      "jobs": {n: dataclasses.asdict(s) for n, s in self.jobs.items()}})


def _parse(path: Path) -> dict:
    """A book's meta and jobs; ValueError (saying what is wrong) for a file that is not one."""
    if not path.is_file():
        return {"meta": {}, "jobs": {}}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("meta", {}), dict) or \
            not isinstance(stored.get("jobs", {}), dict):
        raise ValueError('not {"meta": {...}, "jobs": {...}}')
    fields = [f.name for f in dataclasses.fields(JobStatus)]
    jobs = {}
    for name, status in stored.get("jobs", {}).items():
        if not isinstance(status, dict) or not all(isinstance(status.get(k), str) for k in fields[:3]) or \
                not all(isinstance(status.get(k, ""), str) for k in fields[3:]):
            raise ValueError(f"job {str(name)[:40]} lacks its {', '.join(fields[:3])} or has a field that is "
                             "not text")
        jobs[name] = JobStatus(**{k: status[k] for k in fields if k in status})
    return {"meta": stored.get("meta", {}), "jobs": jobs}


def _set_aside(path: Path) -> Path:
    """The damaged file under a name no other file has: NAME.damaged, or NAME.damaged-2, -3, ..."""
    kept, number = path.with_name(path.name + ".damaged"), 1
    while kept.exists():
        number += 1
        kept = path.with_name(f"{path.name}.damaged-{number}")
    path.rename(kept)
    return kept
