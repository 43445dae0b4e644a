"""Tracking a run in TensorBoard and MLflow, only when asked (`--track tensorboard,mlflow`).

Trackers are observers of `fit` (facetl.train.observers): fit makes them from the config, so every way of
starting a run (train, sweep, folds, torchrun, a launcher's worker) tracks alike, and only rank 0 logs.
"""
from facetl.track.factory import check_trackers, trackers_for

__all__ = ["check_trackers", "trackers_for"]
