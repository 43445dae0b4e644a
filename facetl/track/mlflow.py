"""MLflow: one MLflow run per facetl run, in a local SQLite store by default (MLflow's file store is slow with many
runs), through MlflowClient (no global active run).

Params: the resolved config and the recipe's choices. Metrics: every epoch's history row at step = epoch, one
batched call per epoch, and the final split's metrics (final_...). Artifacts: report.md, metrics.json, config.yaml,
history.csv and the plots. A sweep's or folds' runs are children of one parent run (tags sweep, point, folds, fold);
parallel runs agree on the parent without a lock: each looks for it by tag, and if it had to make one, keeps the
earliest made and deletes its own. A resumed run reopens its MLflow run (tracking.json) and logs on from its epoch;
a copied or moved run reopens it only in a store that travelled with it, and never logs artifacts into the
original's artifact folder (MLflow keeps that path absolute).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from pathlib import Path

from facetl.errors import FacetlError
from facetl.history import MLFLOW_METRICS
from facetl.outputs import refuse_misplaced
from facetl.track.base import Tracker
from facetl.track.places import (hyperparameters, local_path, moved_from, read_tracking, relative_name, remember,
                                 known_uri, set_folder, set_tags, stored_uri, tracking_uri)

EXPERIMENT = "facetl"  # MLFLOW_EXPERIMENT_NAME chooses another
ARTIFACTS = ("report.md", "metrics.json", "config.yaml", "history.csv")
BATCH = 100  # MLflow takes at most 100 params in one call
PARAM_LENGTH = 6000  # and values up to 6000 characters


class MlflowTracker(Tracker):
    name, flag = "MLflow tracking", "mlflow"
    needs = ("mlflow",)
    own_settings = ("tracking_uri",)

    def __init__(self, settings, log=lambda line: None):
        super().__init__(settings, log)
        self.uri, self.client, self.run_id, self.step, self.folder = None, None, None, 0, None
        self.store, self.was = None, None  # the local SQLite file written; the folder the run was copied from

    def places(self, where) -> list[tuple[str, str, Path]]:
        """MLflow's store, when local: an SQLite file, or a file store's folder (none for a server)."""
        path = local_path(tracking_uri(where))
        if path is None:
            return []
        return [("--tracking-uri", where.tracking_uri, path) if where.tracking_uri else
                ("MLflow's default store", tracking_uri(where), path)]

    def check_settings(self, where) -> None:
        if where.tracking_uri:
            check_tracking_uri(where.tracking_uri)

    def on_fit_start(self, run) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        folder, where = run.folder, self.where(run)
        self.uri, self.folder, self.run_id, self.client = tracking_uri(where), folder, None, None
        known = read_tracking(folder).get("mlflow") if run.resumed_after else None
        self.step = run.resumed_after
        uri = known_uri(folder, known) if known else None
        self.was = moved_from(folder, known) if known else None
        if known and uri is None:
            self.log(f"MLflow: {folder} was copied or moved from {self.was or 'elsewhere'}; it is tracked afresh in "
                     f"{self.uri}, and the original's MLflow run is left alone")
        if uri is not None:
            return self._reopen(MlflowClient(uri), uri, known, folder)
        self._start(run, where)

    def _start(self, run, where) -> None:
        """A new MLflow run (a child of its sweep's or folds' parent run), its params the resolved config."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        folder = run.folder
        path = local_path(self.uri)
        self.store = path if self.uri.startswith("sqlite:") else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        experiment = self._experiment(path if self.uri.startswith("sqlite:") else None)
        tags = {"facetl.run_folder": str(folder), **set_tags(where)}
        if where.track_group:
            tags["mlflow.parentRunId"] = self._parent(experiment, set_folder(where))
        self.run_id = self.client.create_run(experiment, run_name=relative_name(where), tags=tags).info.run_id
        remember(folder, "mlflow", {**stored_uri(folder, self.uri), "experiment_id": experiment, "run_id": self.run_id})
        params = [Param(k, str(v)[:PARAM_LENGTH]) for k, v in hyperparameters(run.config, run.record).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def _reopen(self, client, uri: str, known: dict, folder: Path) -> None:
        """Go on with the run's MLflow run (in the store that travelled with it, when it was copied or moved)."""
        self.client, self.run_id = client, known["run_id"]
        self.store = local_path(uri) if uri.startswith("sqlite:") else None
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, "facetl.run_folder", str(folder))
        remember(folder, "mlflow", {**stored_uri(folder, uri), "experiment_id": known.get("experiment_id"),
                                    "run_id": self.run_id})

    def _experiment(self, db: Path | None) -> str:
        """The experiment's id, made when new: with an SQLite store its artifacts go beside the database (`db`)
        (MLflow's default, ./mlruns, is wherever the command happens to run)."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        for attempt in range(3):  # parallel runs may make it at once; the second finds the first's
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            try:
                artifacts = (db.parent / "mlartifacts").as_uri() if db is not None else None
                return self.client.create_experiment(name, artifact_location=artifacts)
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def _parent(self, experiment: str, folder: Path) -> str:
        """The parent run of a sweep's or folds' runs, found by tag; made by whichever run comes first."""
        key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        query = f"tags.`facetl.set` = '{key}'"

        def earliest():
            runs = self.client.search_runs([experiment], filter_string=query, max_results=100)
            return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None

        found = earliest()
        if found is not None:
            return found
        mine = self.client.create_run(experiment, run_name=folder.name,
                                      tags={"facetl.set": key, "facetl.run_folder": str(folder)}).info.run_id
        self.client.set_terminated(mine)
        chosen = earliest()
        if chosen != mine:  # another run made one first: every run keeps the earliest
            self.client.delete_run(mine)
        return chosen

    def on_epoch_end(self, row: dict, best: dict) -> None:
        from mlflow.entities import Metric

        self.step = row["epoch"]
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(row[key]), now, self.step)
                                                    for key in MLFLOW_METRICS if _number(row.get(key))])

    def on_fit_end(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        folder = self.folder
        now = int(time.time() * 1000)
        final = [Metric(f"final_{key}", float(value), now, self.step) for key, value in metrics.items()
                 if _number(value)]
        self.client.log_batch(self.run_id, metrics=final, tags=[_tag("final_split", metrics.get("split", ""))])
        if self._artifacts_stay_inside(folder):
            for name in [*ARTIFACTS, *sorted(p.name for p in folder.glob("*.png"))]:
                if (folder / name).is_file():
                    self.client.log_artifact(self.run_id, str(folder / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def _artifacts_stay_inside(self, folder: Path) -> bool:
        """Whether the run's artifact folder is a place for this run's files. A store copied or moved with its
        run still names the original's artifact folder (MLflow keeps it absolute): writing there would change
        the original's records, or make its folder again after a move, so the files are not logged."""
        where = local_path(self.client.get_run(self.run_id).info.artifact_uri)
        if where is None or self.store is None or self.store.parent in [where, *where.parents]:
            return True  # a server's, or beside the database, where facetl puts a store's artifacts
        root = next((p for p in [where, *where.parents] if p.name == "mlartifacts"), where)
        try:
            if not root.exists():
                raise FacetlError(f"{root} is gone")
            if self.was is not None and self.was in [where, *where.parents]:
                raise FacetlError(f"it is inside {self.was}")
            refuse_misplaced(where, "MLflow's artifact folder", own_run=folder)
        except FacetlError as exc:
            self.log(f"MLflow: this run's files are not logged as artifacts: its artifact folder {where} is another "
                     f"run's ({folder} or its store was copied or moved: {exc}); they are in {folder}")
            return False
        return True

    def close(self) -> None:
        self.client, self.run_id = None, None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))


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
