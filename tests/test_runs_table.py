"""facetl runs DIR: every run folder under DIR as one table, read from the records; damaged folders are notes."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from commandline import in_process, one_line_error
from test_fit import needs_smiles, small
from facetl.train.fit import fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny finished runs at different depths, an unfinished one (killed before run.json) and a damaged one."""
    root = tmp_path_factory.mktemp("runs")
    cache = str(tmp_path_factory.mktemp("cache"))
    tiny = dict(epochs=1, limit=80, strategy="frozen", precision="fp32", cache_dir=cache)
    first = fit(small(root, "a", lr=0.01, **tiny), progress=False, quiet=True).folder
    split = str(first / "split.csv")
    fit(small(root / "study", "b", lr=0.0001, split_file=split, **tiny), progress=False, quiet=True)
    unfinished = root / "study" / "killed"
    unfinished.mkdir()
    for name in ("config.yaml", "history.csv", "train.log"):
        shutil.copy(first / name, unfinished / name)
    copies = root / "study" / "mlartifacts" / "0" / "artifacts"  # MLflow's copies of a run's files are no run
    copies.mkdir(parents=True)
    for name in ("config.yaml", "history.csv", "metrics.json", "report.md"):
        shutil.copy(first / name, copies / name)
    damaged = root / "study" / "damaged"
    shutil.copytree(first, damaged)
    (damaged / "run.json").write_text('{"title": "half a record')
    (root / "notes").mkdir()  # a folder that is no run
    (root / "notes" / "readme.txt").write_text("not a run")
    return root


def history_val(folder, column: str) -> float:
    record = json.loads((folder / "run.json").read_text())
    rows = list(csv.DictReader((folder / "history.csv").open()))
    return float(next(r for r in rows if int(r["epoch"]) == record["best_epoch"])[column])


@needs_smiles
def test_every_run_under_a_folder_is_one_row_with_its_state_and_damage_as_a_note(runs, capsys):
    result = in_process(capsys, "runs", str(runs))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "backbone", "strategy"] and "val loss" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"a", "study/b", "study/killed", "study/damaged"}  # evaluations, notes, MLflow copies: no runs
    assert rows["a"].rstrip().endswith("finished") and "0.01" in rows["a"]
    assert f"{history_val(runs / 'a', 'val_loss'):.4f}" in rows["a"]
    assert "unfinished" in rows["study/killed"]
    assert "damaged" in rows["study/damaged"] and "run.json is damaged" in rows["study/damaged"]


def sorted_column(capsys, runs, tmp_path, column: str) -> list:
    table = tmp_path / f"by-{column}.csv"
    assert in_process(capsys, "runs", str(runs), "--sort", column, "--out", str(table)).returncode == 0
    return [float(r[column]) if r[column] else None for r in csv.DictReader(table.open())]


@needs_smiles
def test_sorting_by_a_loss_is_ascending_and_by_a_score_descending_with_missing_values_last(runs, tmp_path, capsys):
    losses = sorted_column(capsys, runs, tmp_path, "val_loss")
    assert len(losses) == 4 and losses == sorted(losses) and len(set(losses)) > 1
    accuracy = sorted_column(capsys, runs, tmp_path, "accuracy")
    assert accuracy[3] is None  # the unfinished run has no test metrics (the damaged one's metrics.json is whole)
    assert accuracy[:3] == sorted(accuracy[:3], reverse=True)


@needs_smiles
def test_the_table_goes_to_csv_or_markdown_and_an_existing_file_is_kept(runs, tmp_path, capsys):
    table = tmp_path / "table.csv"
    assert in_process(capsys, "runs", str(runs), "--out", str(table)).returncode == 0
    rows = list(csv.DictReader(table.open()))
    assert [r["run"] for r in rows] == ["a", "study/b", "study/damaged", "study/killed"]
    assert float(rows[0]["val_loss"]) == pytest.approx(history_val(runs / "a", "val_loss"))
    markdown = tmp_path / "table.md"
    assert in_process(capsys, "runs", str(runs), "--sort", "roc-auc", "--out", str(markdown)).returncode == 0
    assert markdown.read_text().startswith("| run | backbone |")

    before = table.read_bytes()
    one_line_error(in_process(capsys, "runs", str(runs), "--out", str(table)), "exists", "--overwrite")
    assert table.read_bytes() == before


def test_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(in_process(capsys, "runs", str(empty)), "no runs under")
    one_line_error(in_process(capsys, "runs", str(tmp_path / "absent")), "is not a folder")
    line = one_line_error(in_process(capsys, "runs", str(empty), "--sort", "speed"), "--sort speed")
    assert "val_loss" in line and "roc_auc" in line  # it lists the columns there are
    one_line_error(in_process(capsys, "runs", str(empty), "--out", str(tmp_path / "t.xlsx")), ".csv or .md")
