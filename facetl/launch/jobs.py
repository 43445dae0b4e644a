"""What a launcher runs (Job), what it says about it (JobStatus), and the file that remembers it (JobBook)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

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
    needs to rebuild its table)."""

    def __init__(self, path: str | Path, meta: dict | None = None):
        self.path = Path(path)
        stored = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.meta = {**stored.get("meta", {}), **(meta or {})}
        self.jobs = {name: JobStatus(**{k: v for k, v in status.items() if k in JobStatus.__dataclass_fields__})
                     for name, status in stored.get("jobs", {}).items()}

    def get(self, name: str) -> JobStatus | None:
        return self.jobs.get(name)

    def update(self, status: JobStatus) -> None:
        self.jobs[status.name] = status
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"meta": self.meta,
                                      "jobs": {n: dataclasses.asdict(s) for n, s in self.jobs.items()}})
