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
import time
from pathlib import Path

from facetl.errors import FacetlError
from facetl.outputs import refuse_misplaced
from facetl.track.places import (hyperparameters, local_path, moved_from, read_tracking, relative_name, remember,
                                 known_uri, set_folder, set_tags, stored_uri)

EXPERIMENT = "facetl"  # MLFLOW_EXPERIMENT_NAME chooses another
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
ARTIFACTS = ("report.md", "metrics.json", "config.yaml", "history.csv")
BATCH = 100  # MLflow takes at most 100 params in one call
PARAM_LENGTH = 6000  # and values up to 6000 characters


class MlflowTracker:
    def __init__(self, uri: str, log=lambda line: None):
        self.uri, self.client, self.run_id, self.step, self.log = uri, None, None, 0, log
        self.store, self.was = None, None  # the local SQLite file written; the folder the run was copied from

    def run_started(self, config, record, folder: Path, resumed_after: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        known = read_tracking(folder).get("mlflow") if resumed_after else None
        self.step = resumed_after
        uri = known_uri(folder, known) if known else None
        self.was = moved_from(folder, known) if known else None
        if known and uri is None:
            self.log(f"MLflow: {folder} was copied or moved from {self.was or 'elsewhere'}; it is tracked afresh in "
                     f"{self.uri}, and the original's MLflow run is left alone")
        if uri is not None:
            return self._reopen(MlflowClient(uri), uri, known, folder)
        path = local_path(self.uri)
        self.store = path if self.uri.startswith("sqlite:") else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        experiment = self._experiment(path if self.uri.startswith("sqlite:") else None)
        tags = {"facetl.run_folder": str(folder), **set_tags(config)}
        if config.track_group:
            tags["mlflow.parentRunId"] = self._parent(experiment, set_folder(config))
        self.run_id = self.client.create_run(experiment, run_name=relative_name(config), tags=tags).info.run_id
        remember(folder, "mlflow", {**stored_uri(folder, self.uri), "experiment_id": experiment, "run_id": self.run_id})
        params = [Param(k, str(v)[:PARAM_LENGTH]) for k, v in hyperparameters(config, record).items()]
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

    def epoch_ended(self, row: dict, best: dict) -> None:
        from mlflow.entities import Metric

        self.step = row["epoch"]
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(row[key]), now, self.step)
                                                    for key in EPOCH_METRICS if _number(row.get(key))])

    def run_finished(self, folder: Path, metrics: dict) -> None:
        from mlflow.entities import Metric

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
        pass


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))
