"""Launchers: run a list of jobs as processes on this machine or as one SLURM job array, and say how each went.

A job is `Job(name, command, folder, nproc=1)`: `command` is an argv list (run as a process) or a callable
taking no arguments (run in a fresh process; on SLURM pickled by submitit, so a module-level function);
`folder` is where the job's own files go (its exit record, job.json; locally its output, launch.log). A
job's state is a `JobStatus(name, job_id, state, log, detail)`, `state` one of STATES: pending, running,
finished (exit 0), failed, cancelled (scancel, Ctrl-C), timeout, killed (ended without saying how).

Every launcher has the same three calls:

    statuses = launcher.launch(jobs, on_change)   # local: returns when every job has ended;
                                                  # slurm: submits one array and returns them pending
    statuses = launcher.wait(statuses, on_change) # until none is pending or running
    statuses = launcher.refresh(statuses)         # the state now (after this process was restarted, too)

`on_change(status)` hears of each job's every change of state (a sweep writes its results table as points
finish); `JobBook(path)` keeps the latest status of each job in a JSON file (a sweep's jobs.json), so a
rerun or `--status` knows them. The launchers:

- `LocalLauncher(parallel=N)`: N jobs at once. Each of the N slots has its own GPUs (CUDA_VISIBLE_DEVICES,
  the visible devices divided between slots) or, without GPUs, its own CPU cores (affinity, and
  OMP_NUM_THREADS / MKL_NUM_THREADS set to their number), so N runs do not oversubscribe the machine.
- `SlurmLauncher(SlurmOptions(...), logs=FOLDER)`: one job array through submitit (partition, time, GPUs and
  CPUs per job, array parallelism, extra sbatch options); each job writes its exit code to job.json, so
  states are known without SLURM's accounting database (sacct), from squeue while SLURM remembers the job.
"""
from facetl.launch.jobs import STATES, Job, JobBook, JobStatus
from facetl.launch.local import LocalLauncher
from facetl.launch.slurm import SlurmLauncher, SlurmOptions

__all__ = ["STATES", "Job", "JobBook", "JobStatus", "LocalLauncher", "SlurmLauncher", "SlurmOptions"]
