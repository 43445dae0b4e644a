"""SlurmLauncher (`--launcher slurm`): jobs as one SLURM job array, submitted through submitit; their states from
squeue and from the exit record each job writes (job.json), so nothing needs SLURM's accounting database. It owns
the SLURM flags (--partition, --time, --gpus-per-run, --cpus-per-run, --sbatch); its job ids are SLURM's
(ARRAY_TASK).

On the node, each array task runs `run_job`: the command (or callable) with OMP_NUM_THREADS set to the CPUs
SLURM gave the task, then its exit code written into the job's folder. A command that fails makes the task
fail (SLURM says FAILED); one killed by scancel or a time limit writes nothing, and squeue (while SLURM still
lists the job) or the missing record says so.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from facetl.errors import FacetlError
from facetl.experiments.jobs import Job, JobStatus, read_exit, state_of_exit, write_exit
from facetl.experiments.launcher import register_launcher
from facetl.flags import whole_number

POLL_SECONDS = 3.0
# squeue's states (long form) as a launcher's
SQUEUE_STATES = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "RESIZING": "pending",
                 "SUSPENDED": "pending", "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running",
                 "COMPLETED": "finished", "CANCELLED": "cancelled", "PREEMPTED": "cancelled", "DEADLINE": "timeout",
                 "TIMEOUT": "timeout", "FAILED": "failed", "BOOT_FAIL": "failed", "NODE_FAIL": "failed",
                 "OUT_OF_MEMORY": "failed", "SPECIAL_EXIT": "failed", "REVOKED": "cancelled"}


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    minutes: int = 60                 # each job's time limit
    gpus_per_job: int = 0
    cpus_per_job: int | None = None   # None: SLURM's default (one)
    parallel: int | None = None       # array parallelism: at most this many jobs of the array at once
    sbatch: tuple[str, ...] = ()      # more sbatch options, "KEY=VALUE" or "--KEY=VALUE" (or a bare "--FLAG")
    job_name: str = "facetl"

    def submitit_parameters(self) -> dict:
        extra = {}
        for option in self.sbatch:
            key, sep, value = option.lstrip("-").partition("=")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                raise FacetlError(f"--sbatch {option!r}: write an sbatch option as KEY=VALUE (e.g. account=myproj)")
            extra[key] = value if sep else True
        parameters = dict(job_name=self.job_name, partition=self.partition, time=self.minutes, nodes=1,
                          ntasks_per_node=1, cpus_per_task=self.cpus_per_job, additional_parameters=extra)
        if self.gpus_per_job:
            parameters["gpus_per_node"] = self.gpus_per_job
        if self.parallel:
            parameters["array_parallelism"] = self.parallel
        return {k: v for k, v in parameters.items() if v is not None}


def require_slurm() -> None:
    """One line where this machine cannot submit (no sbatch), or submitit is not installed."""
    if shutil.which("sbatch") is None:
        raise FacetlError("--launcher slurm: SLURM's sbatch is not on PATH here (run on a cluster's login node, "
                          "or use --launcher local)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise FacetlError("--launcher slurm needs submitit: pip install 'facetl[launch]'") from None


@register_launcher
@dataclass
class SlurmLauncher:
    options: SlurmOptions = field(default_factory=SlurmOptions)
    log_folder: Path = Path("slurm-logs")   # submitit's folder: the sbatch scripts, each task's output
    name: ClassVar[str] = "slurm"
    default: ClassVar[bool] = False
    detaches: ClassVar[bool] = True         # the array runs on without this command
    in_this_process: ClassVar[bool] = False

    @classmethod
    def add_arguments(cls, parser) -> None:
        slurm = parser.add_argument_group("SLURM (--launcher slurm)")
        slurm.add_argument("--partition", help="the partition to submit to (default: the cluster's own)")
        slurm.add_argument("--time", type=whole_number(1, 525_600), default=60, metavar="MINUTES",
                           help="each job's time limit in minutes (default 60)")
        slurm.add_argument("--gpus-per-run", type=whole_number(0, 64), default=0, metavar="N",
                           help="GPUs each job asks for (default 0)")
        slurm.add_argument("--cpus-per-run", type=whole_number(1, 1024), metavar="N",
                           help="CPUs each job asks for; its threads follow (default: the cluster's, often 1)")
        slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                           help="another sbatch option for every job, e.g. account=myproj or qos=short; repeat for "
                                "more")

    @classmethod
    def implied_by(cls, args) -> bool:
        return False

    @classmethod
    def from_args(cls, args, out: Path) -> "SlurmLauncher":
        require_slurm()
        options = SlurmOptions(partition=args.partition, minutes=args.time, gpus_per_job=args.gpus_per_run,
                               cpus_per_job=args.cpus_per_run, parallel=getattr(args, "parallel", None),
                               sbatch=tuple(args.sbatch), job_name=f"facetl-{Path(out).name}")
        options.submitit_parameters()  # a malformed --sbatch is one line now, before anything is made
        return cls(options, log_folder=Path(out) / "slurm")

    @classmethod
    def owns(cls, job_id: str) -> bool:
        return re.fullmatch(r"\d+(_\d+)?", job_id) is not None

    @classmethod
    def observer(cls) -> "SlurmLauncher":
        return cls()  # squeue and the jobs' exit records tell, from any process

    def logs(self) -> Path:
        return self.log_folder

    def launch(self, jobs: list[Job], on_change: Callable[[JobStatus], None] = lambda status: None
               ) -> list[JobStatus]:
        """Submit `jobs` as one array; return them pending."""
        require_slurm()
        import submitit

        executor = submitit.SlurmExecutor(folder=str(self.log_folder), max_num_timeout=0)
        executor.update_parameters(**self.options.submitit_parameters())
        try:  # submitit prints sbatch's refusal before raising it: it is said once, in the error below
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                submitted = [executor.submit(run_job, job.command, str(job.folder)) for job in jobs]
        except submitit.core.utils.FailedJobError as exc:  # sbatch said no: its words, not submitit's traceback
            raise FacetlError(f"--launcher slurm: sbatch refused the job array: {sbatch_words(str(exc))}") from None
        statuses = []
        for job, handle in zip(jobs, submitted):
            status = JobStatus(job.name, str(handle.job_id), "pending", str(handle.paths.stdout),
                               folder=str(job.folder))
            on_change(status)
            statuses.append(status)
        return statuses

    def wait(self, statuses: list[JobStatus], on_change=lambda status: None) -> list[JobStatus]:
        """Poll until no job is pending or running, telling `on_change` of every change."""
        while any(s.active for s in statuses):
            time.sleep(POLL_SECONDS)
            fresh = self.refresh(statuses)
            for before, now in zip(statuses, fresh):
                if (now.state, now.detail) != (before.state, before.detail):
                    on_change(now)
            statuses = fresh
        return statuses

    def refresh(self, statuses: list[JobStatus]) -> list[JobStatus]:
        """The state now; unchanged where SLURM cannot be asked (no squeue here, the controller unreachable)."""
        listed = squeue_states([s.job_id for s in statuses if s.active])
        return statuses if listed is None else [_refreshed(s, listed) for s in statuses]


def sbatch_words(stderr: str) -> str:
    """sbatch's error lines as one: 'sbatch: error: invalid partition specified: gpu; Batch job submission
    failed: Invalid partition name specified'."""
    lines = [re.sub(r"^sbatch:\s*(error|fatal):\s*", "", line.strip()) for line in stderr.splitlines()]
    return "; ".join(line for line in lines if line)[:300] or "no message"


def _refreshed(status: JobStatus, listed: dict[str, tuple[str, str]]) -> JobStatus:
    if not status.active:
        return status
    code = read_exit(Path(status.folder), status.job_id) if status.folder else None
    if status.job_id in listed:
        state, reason = listed[status.job_id]
        if state not in ("pending", "running") and code is not None:
            state, reason = state_of_exit(code), f"exit code {code}"  # the job's own word on how it ended
        return JobStatus(status.name, status.job_id, state, status.log, reason, status.folder)
    if code is not None:
        return JobStatus(status.name, status.job_id, state_of_exit(code), status.log, f"exit code {code}",
                         status.folder)
    return JobStatus(status.name, status.job_id, "killed", status.log, "ended without an exit record (scancel, a "
                     "time limit or a node failure); see its log", status.folder)


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, squeue's reason or node)} of those SLURM still lists (finished ones for MinJobAge);
    None when SLURM cannot be asked."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    answer = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%R", "-j", ",".join(job_ids)],
                            capture_output=True, text=True)
    if answer.returncode != 0 and "invalid job id" not in answer.stderr.lower():
        return None  # e.g. the controller is down: nothing is known, not "every job ended"
    states = {}
    for line in answer.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        ours = SQUEUE_STATES.get(state, "pending")
        states[job_id] = (ours, reason if ours in ("pending", "running") else f"SLURM: {state}")
    return states


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)


def run_job(command, folder: str) -> int:
    """An array task's work, on the node: the command with a thread per CPU SLURM gave it, then its exit code
    in folder/job.json. Fails (so SLURM says FAILED) when the command does."""
    job_id = _this_job_id()
    Path(folder).mkdir(parents=True, exist_ok=True)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or "1"
    os.environ.update(OMP_NUM_THREADS=cpus, MKL_NUM_THREADS=cpus)
    if callable(command):
        try:
            command()
            code = 0
        except Exception:
            write_exit(Path(folder), job_id, 1)
            raise
    else:
        sys.stdout.flush()
        code = subprocess.call([str(a) for a in command])
    write_exit(Path(folder), job_id, code)
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} exited with {code}")
    return code


def _this_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")
