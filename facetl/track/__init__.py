"""Tracking a run in TensorBoard and MLflow, only when asked (`--track tensorboard,mlflow`).

Trackers are callbacks of `fit` (facetl.train.callbacks), made where a command starts from its tracking settings
(facetl.track.settings: the --track flags, not the run's config): `callbacks_for(tracking_from(args))`. Only rank 0
logs. A tracker is one file here and one line in facetl/track/registry.py.
"""
from __future__ import annotations

from pathlib import Path

from facetl.config import TRACKING_KEYS, load_yaml
from facetl.track.registry import TRACKERS, trackers_for
from facetl.track.settings import TrackingSettings, resumed_tracking, tracking_settings

__all__ = ["TRACKERS", "TrackingSettings", "callbacks_for", "tracking_from", "tracking_settings"]


def tracking_from(args) -> TrackingSettings:
    """A command's tracking settings: its --config file's tracking keys (an old run's config.yaml, a sweep point's)
    under its flags (--track, --track-dir, --tracking-uri, --track-group); for `--resume RUN`, the run's own."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values.update({key: getattr(args, key) for key in TRACKING_KEYS if getattr(args, key, None) is not None})
    given = tracking_settings(values)
    resume = getattr(args, "resume", None)
    return resumed_tracking(Path(resume), given) if resume else given


def callbacks_for(settings: TrackingSettings, log=print) -> list:
    """The trackers the settings ask for, as fit's callbacks (each one serves one run after another)."""
    return trackers_for(settings, log)
