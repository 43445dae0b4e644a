"""Progress of a training run as a callback: a bar for each stage of steps (the LR range test, each epoch's
training, each validation, the final split), a tqdm bar on a terminal and a plain line every half minute in a log
(facetl.progress). The epoch's result line itself is the run's log (train.log), not progress: fit writes it.

fit adds one when asked for progress and handed none; a command or a notebook may hand over its own instead, any
callback with the on_progress_* hooks.
"""
from __future__ import annotations

from facetl.progress import progress_bar
from facetl.train.callbacks import Callback


class ProgressBars(Callback):
    name = "progress bars"

    def __init__(self):
        self.bar = None

    def on_progress_start(self, stage: str, total: int, unit: str) -> None:
        self.on_progress_end()
        self.bar = progress_bar(total=total, desc=stage, unit=unit, summary=False)

    def on_progress(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def on_progress_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.on_progress_end()


def draws_progress(callback) -> bool:
    """Whether a callback shows steps (so fit adds no bars of its own)."""
    return type(callback).on_progress is not Callback.on_progress if isinstance(callback, Callback) \
        else callable(getattr(callback, "on_progress", None))
