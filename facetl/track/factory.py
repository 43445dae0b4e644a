"""Trackers from a config: checked before a run starts (installed? can it write there?), and each one guarded,
so a tracker that fails mid-run (a server gone, a full disk) warns once and training goes on without it."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.track.places import event_folder, local_path, tracking_uri

# tracker -> the modules it imports, and what provides them
NEEDS = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "mlflow": ("mlflow",)}
INSTALL = "pip install 'facetl[track]'"


def check_trackers(config: TrainConfig) -> None:
    """One line before any work when a tracker asked for is not installed, or its local place cannot be written.
    A server's URI is not checked here: a server that does not answer warns once and the run trains on."""
    missing = [name for name in config.trackers if not _importable(NEEDS[name])]
    if missing:
        raise FacetlError(f"--track {','.join(missing)} needs {' and '.join(missing)} installed: {INSTALL}")
    places = []
    if "tensorboard" in config.trackers:
        places.append(("--track-dir" if config.track_dir else "TensorBoard's run folder", event_folder(config)))
    if "mlflow" in config.trackers and (path := local_path(tracking_uri(config))) is not None:
        places.append((f"--tracking-uri {config.tracking_uri}" if config.tracking_uri else
                       f"MLflow's default store {tracking_uri(config)}", path.parent))
    for what, folder in places:
        problem = _unwritable(folder)
        if problem:
            raise FacetlError(f"{what}: cannot write {folder} ({problem})")


def _importable(modules: tuple[str, ...]) -> bool:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def _unwritable(folder: Path) -> str | None:
    """Why `folder` could not be made or written, or None. The nearest existing ancestor decides."""
    for place in [folder, *folder.parents]:
        if place.exists():
            if not place.is_dir():
                return f"{place} is a file, not a folder"
            if not os.access(place, os.W_OK | os.X_OK):
                return f"{place} is not writable"
            return None
    return "no existing folder above it"


def trackers_for(config: TrainConfig, log: Callable[[str], None]) -> list:
    """The observers --track asks for, each guarded; nothing is written until the run starts."""
    made = []
    if "tensorboard" in config.trackers:
        from facetl.track.tensorboard import TensorBoardTracker

        made.append(Guarded(TensorBoardTracker(), "TensorBoard", log))
    if "mlflow" in config.trackers:
        from facetl.track.mlflow import MlflowTracker

        made.append(Guarded(MlflowTracker(tracking_uri(config)), "MLflow", log))
    return made


class Guarded:
    """A tracker behind a guard: its first failure is said once, then it is left out. It never stops training."""

    def __init__(self, tracker, name: str, log: Callable[[str], None]):
        self.tracker, self.name, self.log, self.failed = tracker, name, log, False

    def run_started(self, config, record, folder, resumed_after) -> None:
        self._call("run_started", config, record, folder, resumed_after)

    def epoch_ended(self, row: dict, best: dict) -> None:
        self._call("epoch_ended", row, best)  # a tracker never stops a run

    def final_split(self, split) -> None:
        self._call("final_split", split)

    def run_finished(self, folder, metrics: dict) -> None:
        self._call("run_finished", folder, metrics)

    def _call(self, method: str, *args) -> None:
        hook = getattr(self.tracker, method, None)
        if self.failed or hook is None:
            return
        try:
            hook(*args)
        except Exception as exc:  # anything a tracker raises: training matters more than its record
            self.failed = True
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            self.log(f"warning: {self.name} tracking stopped ({type(exc).__name__}: {reason}); the run goes on "
                     f"without it")
            try:
                self.tracker.close()
            except Exception:
                pass
