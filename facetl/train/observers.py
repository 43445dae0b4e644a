"""Who else hears of a run as it goes: trackers (TensorBoard, MLflow) and searches (Optuna's pruner).

`fit(config, observers=[...])` calls each observer on rank 0 only, so a DDP run is one tracked run, not one
a rank. An observer sees the resolved config, every finished epoch's history row and the final metrics; it
never changes the run, except that `epoch_ended` may ask training to stop (a pruned trial), which the run
records as it records an early stop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from facetl.config import TrainConfig
from facetl.record import RunRecord


class RunObserver(Protocol):
    def run_started(self, config: TrainConfig, record: RunRecord, folder: Path, resumed_after: int) -> None:
        """Training begins (`resumed_after`: the last finished epoch of a resumed run, 0 for a new run)."""

    def epoch_ended(self, row: dict, best: dict) -> str | None:
        """One epoch is checkpointed: `row` is its history.csv row. Return a reason to stop training, or None."""

    def run_finished(self, folder: Path, metrics: dict) -> None:
        """The final evaluation is written (metrics.json, report.md and the plots are in `folder`)."""

    # An observer may also define `final_split(split)`: fit then hands it the final split's labels and probabilities
    # (facetl.evaluate.report.SplitResult) before the report is written; TensorBoard draws its PR curve from them.
