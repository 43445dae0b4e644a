"""The Optuna pruner as one of fit's callbacks: each epoch's selection metric (val loss by default) goes to the
trial, and when Optuna's median pruner says so, the run is asked to stop (on_epoch_end returns the reason, which
the run records as its early stop, so a pruned trial is still a whole run folder whose run.json says why)."""
from __future__ import annotations

from facetl.evaluate.metrics import metric
from facetl.train.callbacks import Callback


class PruneTrial(Callback):
    """One trial's pruner; `reason` says why it stopped the run (None while it has not)."""

    def __init__(self, trial, select: str = "val_loss"):
        self.trial, self.select, self.reason = trial, select, None

    def on_epoch_end(self, row: dict, best: dict) -> str | None:
        self.trial.report(row[self.select], row["epoch"])
        if self.trial.should_prune():
            self.reason = (f"pruned (trial {self.trial.number}: {metric(self.select).label} "
                           f"{row[self.select]:.4f} at epoch {row['epoch']} is worse than the median of earlier "
                           "trials there)")
        return self.reason
