"""Issue 29, experiments and processes: a grid with a repeated value, a damaged jobs.json, a bad run.json field,
a bad or raced tune storage, a continued study that explores, a resumed run's figures, and a sweep that dies
with its children on SIGTERM.

Every case runs the real command in a fresh process (tests/commandline.py `facetl`), with real signals.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from commandline import facetl, one_line_error
from conftest import write_image

TINY = ["--weights", "none", "--img-size", "32", "--epochs", "1", "--strategy", "full", "--batch-size", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("experiments") / "faces"
    for c, name in enumerate(("no_smile", "smile")):
        for i in range(12):
            write_image(root / name / f"{i:02d}.jpg", 16, seed=100 * c + i)
    return root


# ---- 11. a grid that names one point twice is refused before anything is trained ----

@pytest.mark.parametrize("grid, needles", [
    (["lr=1e-3,1e-3"], ["--grid", "lr", "1e-3", "more than once"]),
    (["lr=1e-3,0.001"], ["--grid", "same", "lr-1e-3", "lr-0.001"]),
])
def test_a_grid_with_a_repeated_value_is_one_line_and_trains_nothing(data, tmp_path, grid, needles):
    out = tmp_path / "grid"
    result = facetl("sweep", "--data", str(data), *TINY, *[a for g in grid for a in ("--grid", g)], "--out", str(out))
    one_line_error(result, *needles)
    assert not out.exists()


# ---- 18. a run.json field of the wrong type is a note in its row, not a TypeError ----

@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-run") / "run"
    result = facetl("train", "--data", str(data), *TINY, "--out", str(folder))
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize("field, value", [("train_seconds", {"x": 1}), ("best_epoch", "first"),
                                          ("stopped_because", ["pruned"]), ("stopped_after", {"x": 1})])
def test_runs_shows_a_run_json_field_of_the_wrong_type_as_a_note_in_its_row(run, tmp_path, field, value):
    import shutil

    good, bad = tmp_path / "runs" / "good", tmp_path / "runs" / "bad"
    shutil.copytree(run, good)
    shutil.copytree(run, bad)
    record = json.loads((bad / "run.json").read_text())
    record[field] = value
    (bad / "run.json").write_text(json.dumps(record))
    for sort in ([], ["--sort", "train_seconds"], ["--sort", "best_epoch"]):
        result = facetl("runs", str(tmp_path / "runs"), *sort)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
        assert set(rows) == {"bad", "good"}
        assert field in rows["bad"] and "run.json" in rows["bad"], rows["bad"]
        assert "run.json" not in rows["good"]
