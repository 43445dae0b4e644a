"""The trackers `--track` can name, one line each: a tracker is one file in facetl/track/ (a `Tracker`,
facetl/track/base.py) and its line here."""
from __future__ import annotations

from facetl.track.mlflow import MlflowTracker
from facetl.track.tensorboard import TensorBoardTracker

TRACKERS = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
}


def trackers_for(settings, log=lambda line: None) -> list:
    """The callbacks --track asks for, in the order given; nothing is written until a run starts."""
    return [TRACKERS[name](settings, log) for name in settings.trackers]
