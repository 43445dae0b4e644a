"""Trackers from a config: checked before a run starts (installed? can it write there?), and each one guarded,
so a tracker that fails mid-run (a server gone, a full disk) warns once and training goes on without it."""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Callable

from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.outputs import refuse_misplaced, unwritable
from facetl.track.places import event_folder, local_path, tracking_uri

# tracker -> the modules it imports, and what provides them
NEEDS = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "mlflow": ("mlflow",)}
INSTALL = "pip install 'facetl[track]'"


def check_trackers(config: TrainConfig, reads=(), own_run: str | Path | None = None) -> None:
    """One line before any work when a tracker asked for is not installed, its URI is not one MLflow can use, or a
    local place it writes breaks the output rule (an input, inside the data `reads`, inside a run other than
    `own_run`: facetl.outputs.refuse_misplaced) or cannot be written. A server's URI is not reached here: a
    server that does not answer warns once and the run trains on."""
    missing = [name for name in config.trackers if not _importable(NEEDS[name])]
    if missing:
        raise FacetlError(f"--track {','.join(missing)} needs {' and '.join(missing)} installed: {INSTALL}")
    places = tracker_places(config)
    for flag, given, place in places:
        refuse_misplaced(place, flag, reads, own_run, given)
    if "mlflow" in config.trackers and config.tracking_uri:
        check_tracking_uri(config.tracking_uri)
    for flag, given, place in places:
        folder = place if place.is_dir() else place.parent
        problem = unwritable(folder)
        if problem:
            raise FacetlError(f"{flag} {given}: cannot write {folder} ({problem})")


def tracker_places(config: TrainConfig) -> list[tuple[str, str, Path]]:
    """(flag, its value as given, the local place it writes) per tracker: TensorBoard's event folder, and MLflow's
    store (an SQLite file, or a file store's folder; none for a server)."""
    places = []
    if "tensorboard" in config.trackers:
        folder = event_folder(config)
        places.append(("--track-dir", config.track_dir, folder) if config.track_dir else
                      ("TensorBoard's event folder", str(folder), folder))
    if "mlflow" in config.trackers and (path := local_path(tracking_uri(config))) is not None:
        places.append(("--tracking-uri", config.tracking_uri, path) if config.tracking_uri else
                      ("MLflow's default store", tracking_uri(config), path))
    return places


# what MLflow's tracking stores take: a server, Databricks, or a database through SQLAlchemy (postgresql+psycopg2)
SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc", "sqlite", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str) -> None:
    """A URI MLflow can use, said before any work: an unknown scheme, an SQLite database that is a folder, and a
    file store (a plain path or file:, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE is true) would
    otherwise fail mid-run, or retry for minutes under SQLAlchemy's warnings, and leave the run untracked."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    name = scheme.group(1).lower().split("+")[0] if scheme and len(scheme.group(1)) > 1 else ""
    path = local_path(uri)
    if uri in ("databricks", "databricks-uc"):  # MLflow's names for a Databricks workspace's store
        return
    if name == "sqlite":
        if path is None or path.is_dir():
            raise FacetlError(f"--tracking-uri {uri}: {'not sqlite:///FILE' if path is None else 'it is a folder'}; "
                              f"name an SQLite database file, e.g. {_database_for(path or Path('mlflow.db'))}")
        return
    if name in ("", "file"):
        if _file_store_refused():
            raise FacetlError(f"--tracking-uri {uri} is MLflow's file store, which this MLflow no longer "
                              f"writes; give a database, e.g. {_database_for(path)}")
        if path.exists() and not path.is_dir():
            raise FacetlError(f"--tracking-uri {uri}: a file store is a folder, and {path} is a file; for an "
                              f"SQLite database write sqlite:///{path.as_posix()}")
        return
    if name not in SCHEMES:
        raise FacetlError(f"--tracking-uri {uri}: MLflow does not know the scheme {scheme.group(1)}:// (it takes "
                          f"sqlite:///FILE, http(s)://HOST, or {', '.join(SCHEMES[6:])} databases)")


def _file_store_refused() -> bool:
    """Whether the installed MLflow refuses a file store (MLflow 3 does, unless MLFLOW_ALLOW_FILE_STORE is true)."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # an MLflow from before the file store was retired
        return False
    return not MLFLOW_ALLOW_FILE_STORE.get()


def _database_for(path: Path) -> str:
    """The SQLite URI a user probably meant: the file itself when it has an extension, else one inside the folder."""
    return f"sqlite:///{(path if path.suffix and not path.is_dir() else path / 'mlflow.db').as_posix()}"


def _importable(modules: tuple[str, ...]) -> bool:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def trackers_for(config: TrainConfig, log: Callable[[str], None]) -> list:
    """The observers --track asks for, each guarded; nothing is written until the run starts."""
    made = []
    if "tensorboard" in config.trackers:
        from facetl.track.tensorboard import TensorBoardTracker

        made.append(Guarded(TensorBoardTracker(log), "TensorBoard", log))
    if "mlflow" in config.trackers:
        from facetl.track.mlflow import MlflowTracker

        made.append(Guarded(MlflowTracker(tracking_uri(config), log), "MLflow", log))
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
