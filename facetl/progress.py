"""Progress that everyone sees: a tqdm bar on a terminal; without one (a log file, CI, nohup), a plain line
on stdout every LINE_SECONDS with the count, rate and ETA, and one line when the stage is done.

`progress_bar(iterable=None, total=..., desc=..., unit=..., enabled=...)` is a drop-in for the part of tqdm
facetl uses: iterate it, or `update(n)` and `close()` it (also as a context manager), read `n`, `total` and
`disable`, `set_description`, `set_postfix`, `write`. enabled=False is silent (library calls and tests).
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_SECONDS = 30.0  # at most one line per stage this often: a log stays readable, a stuck stage shows


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 leave: bool = False, summary: bool = True, **tqdm_args):
    """summary=False: no line when done (the caller prints its own, as each epoch does)."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, **tqdm_args)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, summary=summary)


class LineProgress:
    disable = False  # as tqdm says it: progress is shown (as lines), so a caller need not print its own

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it",
                 every: float | None = None, summary: bool = True):
        self.iterable, self.desc, self.unit, self.summary = iterable, desc, unit, summary
        self.every = LINE_SECONDS if every is None else every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.started = 0, time.perf_counter()
        self.last_line, self.closed, self.postfix = self.started, False, ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last_line >= self.every and (self.total is None or self.n < self.total):
            self.last_line = now
            rate = self.n / max(now - self.started, 1e-9)
            of = f"/{self.total} ({self.n / self.total:.0%})" if self.total else ""
            eta = f", ETA {(self.total - self.n) / rate:.0f} s" if self.total and rate > 0 else ""
            _line(f"{self.desc}: {self.n}{of} {self.unit}, {rate:.1f} {self.unit}/s{eta}{self.postfix}")

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", " + ", ".join(f"{k}={v}" for k, v in values.items()) if values else ""

    def refresh(self) -> None:
        pass

    @staticmethod
    def write(text: str, file=None, end: str = "\n", nolock: bool = False) -> None:
        _line(text)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        seconds = time.perf_counter() - self.started
        if self.summary and self.n and seconds >= 1.0:  # a stage worth a line: what it did and how long it took
            _line(f"{self.desc}: {self.n} {self.unit} in {seconds:.1f} s ({self.n / seconds:.1f} {self.unit}/s)")


def _line(text: str) -> None:
    try:
        print(text, flush=True)
    except (BrokenPipeError, ValueError, OSError):  # stdout closed (| head): progress is not worth a run
        pass
