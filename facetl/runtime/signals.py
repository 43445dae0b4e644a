"""SIGTERM heard as Ctrl-C, and a job's whole process group ended with it.

`kill PID`, a SLURM scancel or time limit, and a container's stop all send SIGTERM. Python's default for it is
to die at once, so a sweep or tune that launched jobs left them running under PID 1 (still holding their run
folders' locks) and its jobs.json saying "running". Heard as KeyboardInterrupt, SIGTERM takes the path Ctrl-C
takes: the launcher ends its jobs, records them, and the command says what it kept. `facetl`'s entry (cli.main)
runs every command inside `terminate_as_interrupt`, so a plain `train` also stops as on Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

GRACE_SECONDS = 30  # a job asked to stop (SIGINT) has this long to save and go, then its group is killed


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt in the main thread (elsewhere, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number, frame):
        raise KeyboardInterrupt(f"signal {number}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def ignoring_signals() -> Iterator[None]:
    """While a launcher ends its jobs: a second Ctrl-C or SIGTERM must not leave one half-ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {n: signal.signal(n, signal.SIG_IGN) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def end_group(pid: int, ended, grace: float = GRACE_SECONDS) -> None:
    """End the process group `pid` leads (a job started in a session of its own, with whatever it started:
    torchrun's ranks, data-loader workers): SIGINT, so a facetl command stops as on Ctrl-C (its checkpoint kept,
    its lock let go); after `grace` seconds, or once the leader has ended, SIGKILL for what is left.
    `ended()` says whether the leader has ended (and reaps it)."""
    _signal_group(pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while not ended() and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)  # the leader, if it would not end, and any child it left behind


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
