"""Sweeps whose points run as jobs: `facetl sweep --launcher local --parallel N` on this machine, and
`--launcher slurm` on a real single-node SLURM cluster (tests/slurm_cluster.py) started for this module.

The SLURM case is slow (a cluster, a local sweep to compare with, a killed job and a rerun: about a minute);
`make test-all` runs it, and .ci/run runs it after `make test`.
"""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest

from commandline import in_process, one_line_error
from facetl.experiments.local import available_cores
from conftest import write_image

TINY = ["--weights", "none", "--img-size", "32", "--epochs", "1", "--strategy", "full", "--batch-size", "8"]
GRID = ["--grid", "lr=1e-3,1e-2", "--grid", "dropout=0.5,0.2"]
# the numbers of a results table that training decides (not its timings or paths)
NUMERIC = ["accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "val_acc", "trainable_params"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("launch") / "faces"
    for c, name in enumerate(("no_smile", "smile")):
        for i in range(16):
            write_image(root / name / f"{i:02d}.jpg", 16, seed=100 * c + i)
    return root


def results(folder: Path) -> dict[str, dict]:
    with open(folder / "results.csv", newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def same_numbers(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert list(a) == list(b)
    for run in a:
        for column in NUMERIC:
            x, y = a[run][column], b[run][column]
            assert (x == y == "") or float(x) == pytest.approx(float(y), rel=1e-5, abs=1e-6), (run, column, x, y)


def test_bad_launch_input_is_one_line(capsys, tmp_path, monkeypatch, data):
    common = ["sweep", "--data", str(data), *TINY, "--out", str(tmp_path / "grid"), "--grid", "lr=1e-3,1e-2"]
    one_line_error(in_process(capsys, *common, "--launcher", "pbs"), "--launcher", "invalid choice: 'pbs'")
    one_line_error(in_process(capsys, *common, "--parallel", "0"), "--parallel", "out of range")
    one_line_error(in_process(capsys, *common, "--parallel", "two"), "--parallel", "whole number")
    one_line_error(in_process(capsys, *common, "--launcher", "local", "--detach"), "--detach")
    one_line_error(in_process(capsys, "sweep", "--status", str(tmp_path)), "jobs.json")
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    one_line_error(in_process(capsys, *common, "--launcher", "slurm"), "sbatch", "not on PATH")
    assert not (tmp_path / "grid").exists()  # refused before anything was made


@pytest.mark.slow
def test_parallel_local_sweep_trains_each_point_in_its_own_process_on_one_split(capsys, tmp_path, data):
    out = tmp_path / "grid"
    result = in_process(capsys, "sweep", "--data", str(data), *TINY, "--grid", "lr=1e-3,1e-2", "--out", str(out),
                        "--launcher", "local", "--parallel", "2")
    assert result.returncode == 0, result.stderr + result.stdout
    points = ["lr-1e-3", "lr-1e-2"]
    assert list(results(out)) == points
    assert len({(out / p / "split.csv").read_bytes() for p in points}) == 1  # the first point's split, shared
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    assert {jobs[p]["state"] for p in points} == {"finished"}
    assert len({jobs[p]["job_id"] for p in points}) == 2  # two processes
    if len(available_cores()) >= 2:  # each of the two runs had a core to itself
        assert "; cores 0)" in result.stdout and "; cores 1)" in result.stdout

    (out / "results.md").unlink()
    status = in_process(capsys, "sweep", "--status", str(out))
    assert status.returncode == 0 and "2 finished of 2 points" in status.stdout
    assert (out / "results.md").is_file()  # rebuilt

    again = in_process(capsys, "sweep", "--data", str(data), *TINY, "--grid", "lr=1e-3,1e-2", "--out", str(out),
                       "--launcher", "local", "--parallel", "2")
    assert again.returncode == 0 and again.stdout.count("finished earlier") == 2
    assert "launching" not in again.stdout


def wait_until(condition, timeout: float = 180, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_a_grid_on_slurm_matches_local_and_a_killed_point_alone_runs_again(cluster, capsys, tmp_path, data,
                                                                          monkeypatch):
    local = tmp_path / "local"
    result = in_process(capsys, "sweep", "--data", str(data), *TINY, *GRID, "--out", str(local), "--parallel", "2")
    assert result.returncode == 0, result.stderr + result.stdout

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    out = tmp_path / "slurm"
    # as many CPUs (so threads) per job as a local point of two at a time has cores: the numbers then agree
    command = ["sweep", "--data", str(data), *TINY, *GRID, "--out", str(out), "--launcher", "slurm",
               "--cpus-per-run", str(max(1, len(available_cores()) // 2)), "--time", "10"]
    submitted = in_process(capsys, *command, "--detach")
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    victim = "lr-1e-3_dropout-0.2"
    print(f"submitted: {[(n, j['job_id']) for n, j in jobs.items()]}\n{cluster.squeue()}")
    # kill one point's job once it runs
    wait_until(lambda: f"{jobs[victim]['job_id']} " in cluster.squeue() and
               f"{jobs[victim]['job_id']} facetl-slurm RUNNING" in cluster.squeue())
    print(f"before scancel:\n{cluster.squeue()}")
    subprocess.run(["scancel", jobs[victim]["job_id"]], env=cluster.env(), check=True)
    wait_until(lambda: not any(s in cluster.squeue() for s in ("PENDING", "RUNNING", "COMPLETING")), every=1)
    print(f"after the array ended:\n{cluster.squeue()}")

    status = in_process(capsys, "sweep", "--status", str(out))
    print(status.stdout)
    line = next(line for line in status.stdout.splitlines() if line.startswith(victim))
    assert "cancelled" in line or "killed" in line
    assert "3 finished, 1 " in status.stdout
    finished_before = {n: (out / n / "metrics.json").stat().st_mtime_ns for n in jobs if n != victim}

    rerun = in_process(capsys, *command)
    print(rerun.stdout)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert "launching 1 of 4 points" in rerun.stdout and rerun.stdout.count("finished earlier") == 3
    after = json.loads((out / "jobs.json").read_text())["jobs"]
    assert after[victim]["job_id"] != jobs[victim]["job_id"] and after[victim]["state"] == "finished"
    assert {n: (out / n / "metrics.json").stat().st_mtime_ns for n in finished_before} == finished_before
    print(f"job completion log:\n{cluster.completed()}")
    assert cluster.completed().count("JobState=COMPLETED") == 4 and "JobState=CANCELLED" in cluster.completed()
    same_numbers(results(out), results(local))


@pytest.mark.slow
def test_folds_through_the_local_launcher_match_the_sweep_in_one_process(capsys, tmp_path, data):
    import torch

    common = ["sweep", "--data", str(data), *TINY, "--grid", "lr=1e-3", "--folds", "2"]
    # here as many torch threads as each of the two jobs gets (half the cores): another count sums floats in
    # another order, and a 16-image test split shows it
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(available_cores()) // 2))
    try:
        assert in_process(capsys, *common, "--out", str(tmp_path / "here")).returncode == 0
    finally:
        torch.set_num_threads(before)
    result = in_process(capsys, *common, "--out", str(tmp_path / "jobs"), "--parallel", "2")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "launching 2 of 2 points" in result.stdout  # each fold its own job
    for name in ("fold-1", "fold-2"):
        assert (tmp_path / "jobs" / "lr-1e-3" / name / "split.csv").read_bytes() == \
            (tmp_path / "here" / "lr-1e-3" / name / "split.csv").read_bytes()
    fold_results = {name: results(tmp_path / name / "lr-1e-3") for name in ("here", "jobs")}
    same_numbers({k: v for k, v in fold_results["jobs"].items() if k.startswith("fold")},
                 {k: v for k, v in fold_results["here"].items() if k.startswith("fold")})
    assert (tmp_path / "jobs" / "results.md").read_text().count("± ") > 0


@pytest.mark.slow
def test_an_array_sbatch_refuses_is_one_line_with_sbatchs_words(cluster, tmp_path, data):
    """Issue 29: a partition SLURM does not have (or any sbatch refusal) gave submitit's 30-line traceback."""
    import sys

    def facetl(*args):  # the real command, in a fresh process that sees the test cluster
        return subprocess.run([sys.executable, "-m", "facetl", *args], capture_output=True, text=True, timeout=600,
                              env={**cluster.env(), "PYTHONWARNINGS": "ignore"})

    slurm = ["--launcher", "slurm", "--partition", "nosuchpart", "--time", "5"]
    sweep = facetl("sweep", "--data", str(data), *TINY, "--grid", "lr=1e-3,1e-2", "--out", str(tmp_path / "grid"),
                   *slurm)
    line = one_line_error(sweep, "sbatch", "nosuchpart")
    assert "invalid partition" in line.lower(), line
    assert "facetl" not in cluster.squeue()  # nothing was submitted
    tune = facetl("tune", "--data", str(data), *TINY, "--space", "lr=log:1e-4:1e-1", "--trials", "2", "--out",
                  str(tmp_path / "study"), *slurm)
    assert "invalid partition" in one_line_error(tune, "sbatch", "nosuchpart").lower()
