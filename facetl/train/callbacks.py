"""What hears of a training run as it goes: trackers, a search's pruner, the Grad-CAM gallery, in the spirit of
Lightning's callbacks and loggers.

`fit(config, callbacks=[...])` calls each callback on rank 0 only (a DDP run is one tracked run, not one a rank),
in this order:

    on_check(where, reads, own_run)  before any work: refuse (FacetlError) what the callback could not do
    on_fit_start(run)                the run folder, the resolved config and the record are ready; training begins
    on_progress_start(stage, total, unit)  a stage of steps begins: the LR range test, an epoch's training
                                     ("epoch 3/12"), a validation, the final split ("test")
    on_progress(done)                `done` of the stage's `total` steps are through
    on_progress_end()                the stage is over
    on_epoch_end(row, best)          an epoch is checkpointed (`row`: its history.csv row); may return a reason
                                     to stop training (a pruned trial), which the run records as an early stop
    on_final_split(final)            the final split is predicted, before its report is written
    on_fit_end(metrics)              metrics.json, report.md and the plots are written
    close()                          always, last, even when the run failed: release what it holds

A callback is any object with some of these methods; subclass `Callback` for the no-op defaults. Whoever starts
the work (a command) assembles the callbacks and hands them to fit. fit builds one at most: the progress bars
(facetl.train.progress_bars), when asked for progress and none was handed over, as Lightning's Trainer adds its
progress bar. One callback object may hear several runs one after another (a sweep's points): each begins with
on_fit_start and ends with close.

A callback that raises during a run is said once in the log and left out of the rest of that run (closed at once):
a callback never stops training, except by asking through on_epoch_end.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    import torch

    from facetl.config import TrainConfig
    from facetl.evaluate.report import SplitResult
    from facetl.record import RunRecord
    from facetl.runtime import Runtime


@dataclass(frozen=True)
class RunInfo:
    """What a callback learns when a run starts."""

    folder: Path            # the run folder
    config: TrainConfig     # resolved: the recipe's choices filled in, data paths absolute (its config.yaml)
    record: RunRecord       # the run's record; fit fills in its threshold, calibration and stop as they happen
    resumed_after: int      # the last finished epoch of a resumed run, 0 for a new run
    runtime: Runtime        # where it runs
    log: Callable[[str], None]  # a line above any progress bar, kept in the run's train.log


@dataclass(frozen=True)
class FinalSplit:
    """The final split, predicted with the best epoch's weights, before its report is written."""

    split: SplitResult        # its labels, probabilities, images and paths
    model: torch.nn.Module    # the best epoch's model
    history: list[dict]       # every epoch's history.csv row


class Callback:
    """No-op defaults: a callback defines only what it wants to hear."""

    def on_check(self, where: TrainConfig, reads: Sequence[Path] = (), own_run: str | Path | None = None) -> None:
        """Before any work (`where.out`: the run's folder, or a sweep's or folds' folder of runs): raise a
        FacetlError for what could not work (not installed, a place it would write that breaks the output rule)."""

    def on_fit_start(self, run: RunInfo) -> None:
        """Training begins."""

    def on_progress_start(self, stage: str, total: int, unit: str) -> None:
        """A stage of `total` steps (`unit`: batch, step) begins."""

    def on_progress(self, done: int) -> None:
        """`done` steps of the stage are through."""

    def on_progress_end(self) -> None:
        """The stage is over (finished, or left by an error)."""

    def on_epoch_end(self, row: dict, best: dict) -> str | None:
        """An epoch is checkpointed. Return a reason to stop training, or None."""
        return None

    def on_final_split(self, final: FinalSplit) -> None:
        """The final split is predicted; pictures drawn now go into the report."""

    def on_fit_end(self, metrics: dict) -> None:
        """The final evaluation is written (metrics.json, report.md and the plots are in the run folder)."""

    def close(self) -> None:
        """The run is over, finished or failed."""


HOOKS = ("on_fit_start", "on_progress_start", "on_progress", "on_progress_end", "on_epoch_end", "on_final_split",
         "on_fit_end")


class Callbacks:
    """A run's callbacks, each call guarded: a callback's first failure is said once in the log, it is closed and
    left out, and the run goes on. `close()` closes every callback still in, each guarded too."""

    def __init__(self, callbacks: Iterable, log: Callable[[str], None]):
        self.active, self.log = list(callbacks), log

    def fit_start(self, run: RunInfo) -> None:
        self._each("on_fit_start", run)

    def steps(self, items: Sequence, stage: str, unit: str = "batch") -> Iterator:
        """Iterate `items` (a stage's steps), telling the callbacks each step that is through."""
        if not self.active:  # other ranks, quiet runs: nothing to tell
            yield from items
            return
        self._each("on_progress_start", stage, len(items), unit)
        try:
            for done, item in enumerate(items, start=1):
                yield item
                self._each("on_progress", done)
        finally:
            self._each("on_progress_end")

    def epoch_end(self, row: dict, best: dict) -> str | None:
        """The first reason to stop that a callback gives, or None (every callback hears the epoch)."""
        reasons = [reason for reason in self._each("on_epoch_end", row, best) if reason]
        return reasons[0] if reasons else None

    def final_split(self, final: FinalSplit) -> None:
        self._each("on_final_split", final)

    def fit_end(self, metrics: dict) -> None:
        self._each("on_fit_end", metrics)

    def close(self) -> None:
        for callback in self.active:
            _close(callback)
        self.active = []

    def _each(self, hook: str, *args) -> list:
        answers = []
        for callback in list(self.active):
            method = getattr(callback, hook, None)
            if method is None:
                continue
            try:
                answers.append(method(*args))
            except Exception as exc:  # anything a callback raises: training matters more than what hears of it
                self.active.remove(callback)
                reason = (str(exc).strip().splitlines() or [""])[0][:200]
                self.log(f"warning: {name_of(callback)} stopped ({type(exc).__name__}: {reason}); the run goes on "
                         "without it")
                _close(callback)
        return answers


def check_callbacks(callbacks: Iterable, where: TrainConfig, reads: Sequence[Path] = (),
                    own_run: str | Path | None = None) -> None:
    """Each callback's on_check, unguarded: what it refuses stops the command before any work."""
    for callback in callbacks:
        check = getattr(callback, "on_check", None)
        if check is not None:
            check(where, reads, own_run)


def name_of(callback) -> str:
    """How the log names a callback: its `name` (a tracker's: 'MLflow tracking'), else its class."""
    return getattr(callback, "name", None) or type(callback).__name__


def _close(callback) -> None:
    close = getattr(callback, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # closing what already failed: nothing more to say
        pass
