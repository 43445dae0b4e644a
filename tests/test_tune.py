"""facetl tune: an Optuna search whose trials are run folders on one split, pruned through fit's observers,
continued by rerunning, with a best.yaml that reruns to the same validation figure."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from commandline import facetl, in_process, one_line_error
from test_fit import SMILES, needs_smiles

TINY = ["--data", str(SMILES), "--weights", "none", "--img-size", "32", "--limit", "80", "--batch-size", "16",
        "--strategy", "frozen", "--precision", "fp32"]


def selected_val_loss(run) -> float:
    record = json.loads((run / "run.json").read_text())
    rows = list(csv.DictReader((run / "history.csv").open()))
    return float(next(r for r in rows if int(r["epoch"]) == record["best_epoch"])["val_loss"])


def trials(study) -> list[dict]:
    return list(csv.DictReader((study / "trials.csv").open()))


@pytest.mark.parametrize("space, needles", [
    ("lr", ["--space 'lr'", "KEY=log:LOW:HIGH"]),
    ("lr=log:1e-5", ["--space 'lr=log:1e-5'", "KEY=log:LOW:HIGH"]),
    ("lr=log:1e-5:1e-2:3", ["KEY=log:LOW:HIGH"]),
    ("lr=log:small:1e-2", ["'small' is not a number"]),
    ("lr=log:0:1e-2", ["LOW above 0"]),
    ("lr=float:0.1:0.01", ["LOW must be below HIGH"]),
    ("epochs=float:1:3", ["whole number", "int:LOW:HIGH"]),
    ("strategy=log:1:2", ["not a number", "strategy=A,B,C"]),
    ("learning_rate=log:1e-5:1e-2", ["'learning_rate' is not a configuration key"]),
    ("out=a,b", ["'out' is not a configuration key"]),
    ("strategy=frozen,sideways", ["strategy=sideways", "is not one of"]),
    ("lr=log:1e-5:100", ["lr=100", "out of range"]),
])
def test_a_malformed_space_is_one_line_and_makes_nothing(space, needles, tmp_path, capsys):
    out = tmp_path / "study"
    result = in_process(capsys, "tune", *TINY, "--space", space, "--trials", "2", "--out", str(out))
    one_line_error(result, *needles)
    assert not out.exists()


def test_tune_without_a_space_or_out_is_one_line(tmp_path, capsys):
    one_line_error(in_process(capsys, "tune", *TINY, "--trials", "2", "--out", str(tmp_path / "s")), "--space")
    one_line_error(in_process(capsys, "tune", *TINY, "--space", "lr=log:1e-4:1e-2"), "--out DIR")
    one_line_error(in_process(capsys, "tune", *TINY, "--space", "lr=log:1e-4:1e-2", "--space", "lr=1e-3",
                              "--out", str(tmp_path / "s")), "lr more than once")
    one_line_error(in_process(capsys, "tune", "--worker", str(tmp_path)), "no facetl tune study")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.yaml").write_text("my own notes\n")
    one_line_error(in_process(capsys, "tune", *TINY, "--space", "lr=log:1e-4:1e-2", "--out", str(mine)),
                   "holds files but no facetl tune study")
    assert [p.name for p in mine.iterdir()] == ["best.yaml"] and (mine / "best.yaml").read_text() == "my own notes\n"


def test_without_optuna_tune_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    result = in_process(capsys, "tune", *TINY, "--space", "lr=log:1e-4:1e-2", "--out", str(tmp_path / "s"))
    one_line_error(result, "pip install 'facetl[tune]'")
    assert not (tmp_path / "s").exists()


@needs_smiles
def test_trials_are_run_folders_on_one_split_and_the_best_reruns_to_its_figure(tmp_path, capsys):
    study = tmp_path / "study"
    command = ["tune", *TINY, "--epochs", "1", "--space", "lr=log:1e-4:1e-1", "--seed", "3", "--out", str(study)]
    result = in_process(capsys, *command, "--trials", "2")
    assert result.returncode == 0, result.stderr
    rows = trials(study)
    assert [(r["trial"], r["state"], r["run"]) for r in rows] == [("0", "COMPLETE", "trial-000"),
                                                                   ("1", "COMPLETE", "trial-001")]
    split = (study / "split.csv").read_bytes()  # the first trial's split, which the second reused
    assert (study / "trial-000" / "split.csv").read_bytes() == (study / "trial-001" / "split.csv").read_bytes() == split
    assert "split: reused" in (study / "trial-001" / "train.log").read_text()
    for row in rows:
        assert float(row["val_loss"]) == pytest.approx(selected_val_loss(study / row["run"]))
        assert float(row["lr"]) == yaml.safe_load((study / row["run"] / "config.yaml").read_text())["lr"]
    (best,) = [r for r in rows if r["best"] == "True"]
    assert float(best["val_loss"]) == min(float(r["val_loss"]) for r in rows)
    assert f"best: {study / best['run']}" in result.stdout

    rerun = tmp_path / "rerun"
    assert in_process(capsys, "train", "--config", str(study / "best.yaml"), "--out", str(rerun)).returncode == 0
    assert selected_val_loss(rerun) == pytest.approx(float(best["val_loss"]), abs=1e-6)

    # the same command with more trials continues the study; another search in the folder is refused
    assert in_process(capsys, *command, "--trials", "3").returncode == 0
    assert [r["run"] for r in trials(study)] == ["trial-000", "trial-001", "trial-002"]
    one_line_error(in_process(capsys, *command[:-2], "--space", "strategy=frozen,full", "--out", str(study)),
                   "holds another search")


@needs_smiles
@pytest.mark.slow
def test_eight_trials_in_two_workers_prune_and_the_best_reruns_to_its_figure(tmp_path):
    """The issue's check (also benchmarks/tune_check.py): two worker processes share one SQLite study."""
    study = tmp_path / "study"
    result = facetl("tune", *TINY, "--epochs", "3", "--space", "lr=log:1e-5:1e-1", "--trials", "8",
                    "--startup-trials", "3", "--parallel", "2", "--out", str(study))
    assert result.returncode == 0, result.stderr
    rows = trials(study)
    assert len(rows) == 8 and all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert pruned, rows
    for row in pruned:  # a pruned trial is a whole run folder that says why it stopped
        record = json.loads((study / row["run"] / "run.json").read_text())
        assert record["stopped_because"].startswith("pruned") and int(row["epochs"]) == record["stopped_after"]
    assert "stopped: pruned" in facetl("runs", str(study)).stdout
    (best,) = [r for r in rows if r["best"] == "True"]
    rerun = facetl("train", "--config", str(study / "best.yaml"), "--out", str(tmp_path / "rerun"))
    assert rerun.returncode == 0, rerun.stderr
    assert selected_val_loss(tmp_path / "rerun") == pytest.approx(float(best["val_loss"]), abs=1e-6)
