"""LocalLauncher (`--launcher local`): N jobs at once as processes on this machine, each slot with its own GPUs or
CPU cores. Its job ids are `local-PID`.

Dividing the machine is the point: three PyTorch runs on two cores, each with a thread per core, spin-wait
against each other (an epoch 40x slower). A slot's cores are given by affinity and by OMP_NUM_THREADS, which
torch reads for its thread count; with GPUs, a slot's devices by CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from facetl.experiments.jobs import Job, JobStatus, state_of_exit, write_exit
from facetl.experiments.launcher import register_launcher
from facetl.runtime.signals import end_group, ignoring_signals, terminate_as_interrupt

POLL_SECONDS = 0.2
JOB_ID_PREFIX = "local-"


@dataclass(frozen=True)
class Slot:
    cores: tuple[int, ...]
    gpus: tuple[str, ...] = ()

    def env(self, processes: int = 1) -> dict[str, str]:
        threads = str(max(1, len(self.cores) // processes))  # a torchrun job's ranks share the slot's cores
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none without CUDA)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def divide(items: list, parts: int) -> list[tuple]:
    """`items` into `parts` disjoint, nearly equal runs; with fewer items than parts, they are shared round-robin."""
    if len(items) < parts:
        return [(items[i % len(items)],) if items else () for i in range(parts)]
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [tuple(items[bounds[i]:bounds[i + 1]]) for i in range(parts)]


@register_launcher
@dataclass
class LocalLauncher:
    parallel: int = 1
    cores: list[int] = field(default_factory=available_cores)
    gpus: list[str] = field(default_factory=visible_gpus)
    name: ClassVar[str] = "local"
    default: ClassVar[bool] = False
    detaches: ClassVar[bool] = False     # its jobs end with the command that started them
    in_this_process: ClassVar[bool] = False

    @classmethod
    def add_arguments(cls, parser) -> None:
        pass  # --parallel (shared) is all it takes

    @classmethod
    def implied_by(cls, args) -> bool:
        """--parallel N or --nproc N (N > 1) without --launcher: N processes here."""
        return (getattr(args, "parallel", None) or 1) > 1 or (getattr(args, "nproc", None) or 1) > 1

    @classmethod
    def from_args(cls, args, out: Path) -> "LocalLauncher":
        return cls(parallel=getattr(args, "parallel", None) or 1)

    @classmethod
    def owns(cls, job_id: str) -> bool:
        return job_id.startswith(JOB_ID_PREFIX)

    @classmethod
    def observer(cls) -> None:
        return None  # a local job's state is the launching process's to tell (it may still be running it)

    def logs(self) -> None:
        return None  # each job's output is its folder's launch.log

    def slots(self) -> list[Slot]:
        gpus = divide(self.gpus, self.parallel) if self.gpus else [()] * self.parallel
        return [Slot(c, g) for c, g in zip(divide(self.cores, self.parallel), gpus)]

    def launch(self, jobs: list[Job], on_change: Callable[[JobStatus], None] = lambda status: None
               ) -> list[JobStatus]:
        """Run every job, `parallel` at once, and return their statuses once all have ended. Ctrl-C or SIGTERM
        ends the running ones (each job's whole process group), records them, and re-raises KeyboardInterrupt."""
        free, waiting, running, done = self.slots(), list(jobs), {}, {}
        try:
            with terminate_as_interrupt():
                while waiting or running:
                    while waiting and free:
                        job, slot = waiting.pop(0), free.pop(0)
                        process, status = _start(job, slot)
                        running[job.name] = (job, slot, process, status)
                        on_change(status)
                    for name, (job, slot, process, status) in list(running.items()):
                        if process_ended(process):
                            done[name] = _ended(job, status, process)
                            free.append(slot)
                            del running[name]
                            on_change(done[name])
                    time.sleep(POLL_SECONDS if running else 0)
        except KeyboardInterrupt:
            with ignoring_signals():  # a second Ctrl-C or SIGTERM must not leave a job half-ended
                for job, _, process, status in running.values():
                    end_group(process.pid, lambda: process_ended(process))
                    _reap(process)
                    on_change(_ended(job, status, process))
            raise
        return [done[job.name] for job in jobs]

    def wait(self, statuses: list[JobStatus], on_change=lambda status: None) -> list[JobStatus]:
        return statuses  # launch() returned when every job had ended

    def refresh(self, statuses: list[JobStatus]) -> list[JobStatus]:
        # a local job still marked active outlived the launcher that started it (killed with it): not running now
        return [s if not s.active else JobStatus(s.name, s.job_id, "killed", s.log, "its launcher ended", s.folder)
                for s in statuses]


def _start(job: Job, slot: Slot):
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "launch.log"
    if callable(job.command):
        process = multiprocessing.get_context("spawn").Process(target=_call, args=(job.command, slot, str(log)))
        process.start()
        pid = process.pid
    else:
        with open(log, "ab") as out:  # a session of its own: the launcher ends its whole group (end_group)
            process = subprocess.Popen([str(a) for a in job.command], stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **slot.env(job.nproc)}, start_new_session=True,
                                       preexec_fn=(lambda: _pin(slot.cores)) if slot.cores else None)
        pid = process.pid
    where = f"cores {','.join(map(str, slot.cores))}" + (f", GPUs {','.join(slot.gpus)}" if slot.gpus else "")
    return process, JobStatus(job.name, f"{JOB_ID_PREFIX}{pid}", "running", str(log), where, str(folder))


def process_ended(process) -> bool:
    return process.poll() is not None if hasattr(process, "poll") else not process.is_alive()


def _reap(process, seconds: float = 30) -> None:
    """Wait for a terminated job; kill it if it will not end."""
    if hasattr(process, "join"):
        process.join(seconds)
        if process.is_alive():
            process.kill()
            process.join()
        return
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ended(job: Job, status: JobStatus, process) -> JobStatus:
    code = process.returncode if hasattr(process, "returncode") else process.exitcode
    write_exit(job.folder, status.job_id, code)
    return JobStatus(job.name, status.job_id, state_of_exit(code), status.log, f"exit code {code}", status.folder)


def _pin(cores: tuple[int, ...]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def _call(function, slot: Slot, log: str) -> None:
    """A callable job in its fresh process: its slot's machine first (torch reads them when imported)."""
    import sys
    import traceback

    os.setsid()  # as a command's job: a group of its own, which the launcher ends whole
    os.environ.update(slot.env())
    _pin(slot.cores)
    with open(log, "a") as out:
        sys.stdout = sys.stderr = out
        try:
            function()
        except BaseException:  # into its log, then the failing exit code
            traceback.print_exc()
            out.flush()
            os._exit(1)
