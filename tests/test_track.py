"""Tracking (--track tensorboard,mlflow): what TensorBoard's and MLflow's own readers find after a train, a sweep
and a resumed run; nothing without --track; a failing tracker warns once and the run finishes; bad input is one
line. Runs are tiny frozen ones (features cached once, the head trains in a moment)."""
from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from commandline import ENV, facetl, in_process, one_line_error
from test_fit import SMILES, needs_smiles, small
from facetl.track import TrackingSettings, callbacks_for
from facetl.train.callbacks import Callback
from facetl.train.fit import fit

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TINY = ["--data", str(SMILES), "--weights", "none", "--img-size", "32", "--limit", "80", "--batch-size", "16",
        "--strategy", "frozen", "--lr", "0.01", "--augment", "none"]


def tiny(tmp_path: Path, name: str, **overrides):
    return small(tmp_path, name, strategy="frozen", limit=80, lr=0.01, augment=[], **overrides)


def event_reader(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    reader.Reload()
    return reader


def mlflow_runs(db: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("facetl")
    return client, client.search_runs([experiment.experiment_id])


def history(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "history.csv").open()))


def event_folders(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob("events.out.tfevents.*")}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store: making one runs MLflow's schema migrations (seconds), once per module."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store_in(empty_store):
    """Put an empty store where the run or set in `folder` finds it by default (inside it)."""
    def put(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(empty_store, folder / "mlflow.db")
    return put


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, empty_store) -> Path:
    """A 2-epoch run tracked by both, through the command line; its MLflow store is inside it (the default)."""
    root = tmp_path_factory.mktemp("tracked")
    (root / "run").mkdir()
    shutil.copy(empty_store, root / "run" / "mlflow.db")
    result = in_process(_NoCapsys(), "train", *TINY, "--epochs", "2", "--out", str(root / "run"),
                        "--track", "tensorboard,mlflow")
    assert result.returncode == 0, result
    return root


class _NoCapsys:
    """in_process's capsys for a module fixture: the output is not needed."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})


@needs_smiles
def test_tensorboard_reads_every_epochs_validation_loss_with_the_hparams_in_the_same_run(tracked):
    run = tracked / "run"
    assert event_folders(tracked) == {run}  # one run: no stray sub-run for the hyperparameters
    reader = event_reader(run)
    rows = history(run)
    assert [(s.step, round(s.value, 5)) for s in reader.Scalars("val/loss")] == [
        (int(r["epoch"]), round(float(r["val_loss"]), 5)) for r in rows]
    assert {"train/loss", "train/acc", "val/acc", "lr", "final/accuracy"} <= set(reader.Tags()["scalars"])
    hparams = reader.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hparams)
    assert b"backbone" in hparams["_hparams_/session_start_info"]
    assert {"plots/curves", "plots/roc"} <= set(reader.Tags()["images"])
    assert "pr_curve/positives" in reader.Tags()["tensors"]


@needs_smiles
def test_mlflow_reads_params_every_epochs_metrics_and_the_report_of_a_train(tracked):
    run = tracked / "run"
    client, runs = mlflow_runs(tracked / "run" / "mlflow.db")
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert mlrun.data.params["lr"] == "0.01" and mlrun.data.params["strategy"] == "frozen"
    assert mlrun.data.params["optimizer"] != "none"  # the recipe's choice, resolved
    assert [(m.step, round(m.value, 5)) for m in client.get_metric_history(mlrun.info.run_id, "val_loss")] == [
        (int(r["epoch"]), round(float(r["val_loss"]), 5)) for r in history(run)]
    assert "final_accuracy" in mlrun.data.metrics
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"report.md", "metrics.json", "curves.png", "roc.png"} <= artifacts
    assert not Path("mlruns").exists() or Path("mlruns").stat().st_mtime < mlrun.info.start_time / 1000


@pytest.mark.slow  # two runs, or a run through MLflow's HTTP client; make test-all
@needs_smiles
def test_a_resumed_run_continues_the_same_tracked_run(tmp_path, capsys, store_in):
    store_in(tmp_path / "run")
    out = str(tmp_path / "run")
    assert in_process(capsys, "train", *TINY, "--epochs", "1", "--out", out, "--track", "tensorboard,mlflow"
                      ).returncode == 0
    assert in_process(capsys, "train", "--resume", out, "--epochs", "2").returncode == 0
    client, runs = mlflow_runs(tmp_path / "run" / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2]
    assert event_folders(tmp_path) == {tmp_path / "run"}
    assert [s.step for s in event_reader(tmp_path / "run").Scalars("val/loss")] == [1, 2]


@needs_smiles
def test_a_sweeps_points_are_children_of_one_parent_run(tmp_path, capsys, store_in):
    store_in(tmp_path / "grid")
    result = in_process(capsys, "sweep", *TINY, "--epochs", "1", "--grid", "lr=0.01,0.001",
                        "--out", str(tmp_path / "grid"), "--track", "mlflow")
    assert result.returncode == 0, result.err
    assert not (tmp_path / "mlflow.db").exists()  # nothing beside the sweep's --out
    client, runs = mlflow_runs(tmp_path / "grid" / "mlflow.db")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "grid"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted((r.info.run_name, r.data.tags["sweep"], r.data.tags["point"], r.data.params["lr"])
                  for r in children) == [("lr-0.001", "grid", "lr-0.001", "0.001"), ("lr-0.01", "grid", "lr-0.01",
                                                                                      "0.01")]
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [1]
        assert "report.md" in {a.path for a in client.list_artifacts(child.info.run_id)}


@needs_smiles
def test_without_track_nothing_is_tracked(tmp_path):
    fit(tiny(tmp_path, "run", epochs=1), progress=False, quiet=True)
    written = {p.name for p in tmp_path.rglob("*")}
    assert not {"tracking.json", "mlflow.db", "mlartifacts", "mlruns"} & written
    assert not event_folders(tmp_path)


class BreakArtifacts(Callback):
    """After the first epoch, the MLflow artifact folder's place is taken by a file: logging the report fails."""

    def __init__(self, place: Path):
        self.place = place

    def on_epoch_end(self, row, best):
        self.place.write_text("not a folder")


@needs_smiles
def test_a_tracker_failing_mid_run_warns_once_and_the_run_and_other_tracker_finish(tmp_path, store_in):
    store_in(tmp_path / "run")
    trackers = callbacks_for(TrackingSettings(("tensorboard", "mlflow")))
    result = fit(tiny(tmp_path, "run", epochs=2), progress=False, quiet=True,
                 callbacks=[BreakArtifacts(tmp_path / "run" / "mlartifacts"), *trackers])
    warnings = [line for line in (result.folder / "train.log").read_text().splitlines() if "tracking stopped" in line]
    assert len(warnings) == 1 and "MLflow" in warnings[0]
    assert (result.folder / "metrics.json").is_file()
    assert "final/accuracy" in event_reader(result.folder).Tags()["scalars"]  # TensorBoard went on


@pytest.mark.slow  # two runs, or a run through MLflow's HTTP client; make test-all
@needs_smiles
def test_a_tracking_server_that_does_not_answer_warns_once(tmp_path, capsys, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = in_process(capsys, "train", *TINY, "--epochs", "2", "--out", str(tmp_path / "run"), "--track", "mlflow",
                        "--tracking-uri", f"http://127.0.0.1:{port}")
    assert result.returncode == 0, result.err
    assert (result.stdout + result.stderr).count("MLflow tracking stopped") == 1
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("hidden", [("mlflow",), ("tensorboard", "torch.utils.tensorboard")])
def test_a_tracker_not_installed_is_one_line_naming_what_to_install(tmp_path, capsys, monkeypatch, hidden):
    for module in hidden:  # None in sys.modules: Python's import fails, as if it were not installed
        monkeypatch.setitem(sys.modules, module, None)
    tracker = hidden[0]
    result = in_process(capsys, "train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"), "--track", tracker)
    one_line_error(result, f"--track {tracker}", "pip install 'facetl[track]'")
    assert not (tmp_path / "run").exists()


def test_an_unwritable_tracking_place_is_one_line_before_any_run_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    cases = [(["--track", "mlflow", "--tracking-uri", f"sqlite:///{tmp_path}/notes.txt/mlflow.db"], "cannot write"),
             (["--track", "tensorboard", "--track-dir", str(tmp_path / "notes.txt" / "tb")], "cannot write"),
             (["--track", "wandb"], "'wandb' is not one of tensorboard, mlflow"),
             (["--tracking-uri", "sqlite:///x.db"], "applies with --track mlflow")]
    for flags, needle in cases:
        result = in_process(capsys, "train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"), *flags)
        one_line_error(result, needle)
        assert not (tmp_path / "run").exists()
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


@pytest.mark.slow  # two training processes at once; make test-all
@needs_smiles
def test_parallel_runs_of_one_set_agree_on_one_parent_run(tmp_path, store_in):
    """Two points of one sweep started at the same moment (a parallel or SLURM launcher) nest under one parent."""
    store_in(tmp_path)
    group = tmp_path / "grid"
    group.mkdir()
    runs = [subprocess.Popen([sys.executable, "-m", "facetl", "train", *TINY, "--epochs", "1",
                              "--out", str(group / name), "--track", "mlflow", "--track-group", str(group),
                              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
            for name in ("a", "b")]
    assert [run.wait(timeout=600) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
    _, active = mlflow_runs(tmp_path / "mlflow.db")
    parents = [r for r in active if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "grid"
    assert sorted((r.info.run_name, r.data.tags["mlflow.parentRunId"]) for r in active
                  if r.info.run_id != parents[0].info.run_id) == [
        ("a", parents[0].info.run_id), ("b", parents[0].info.run_id)]


@pytest.mark.slow  # two processes under torchrun; make test-all
@needs_smiles
def test_only_rank_0_of_a_distributed_run_logs(tmp_path, store_in):
    store_in(tmp_path / "run")
    result = facetl("train", "--nproc", "2", *TINY, "--epochs", "2", "--batch-size", "8", "--out",
                    str(tmp_path / "run"), "--track", "tensorboard,mlflow")
    assert result.returncode == 0, result.stderr
    assert "2 processes" in (tmp_path / "run" / "train.log").read_text()
    assert len(list(tmp_path.rglob("events.out.tfevents.*"))) == 1
    client, runs = mlflow_runs(tmp_path / "run" / "mlflow.db")
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2]
