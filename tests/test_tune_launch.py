"""facetl tune's workers through the launchers: `--launcher slurm` submits them as one job array on a real
single-node SLURM cluster (tests/slurm_cluster.py), all sharing the study's SQLite storage; bad launcher input is
one line before anything is made.

The SLURM case is slow (a cluster and two workers' trials: about a minute); `make test-all` runs it, and .ci/run
runs it after `make test`.
"""
from __future__ import annotations

import json
import threading

import pytest

from commandline import in_process, one_line_error
from test_fit import needs_smiles
from test_tune import TINY, selected_val_loss, trials

SPACE = ["--epochs", "1", "--space", "lr=log:1e-4:1e-1", "--seed", "3"]


def test_bad_launcher_input_for_tune_is_one_line(capsys, tmp_path, monkeypatch):
    common = ["tune", *TINY, *SPACE, "--trials", "2", "--out", str(tmp_path / "study")]
    one_line_error(in_process(capsys, *common, "--launcher", "pbs"), "--launcher", "invalid choice: 'pbs'")
    one_line_error(in_process(capsys, *common, "--launcher", "slurm", "--sbatch", "not an option"), "--sbatch",
                   "KEY=VALUE")
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    one_line_error(in_process(capsys, *common, "--launcher", "slurm"), "sbatch", "not on PATH")
    assert not (tmp_path / "study").exists()  # refused before the study was made


@needs_smiles
def test_a_worker_that_fails_is_one_line_naming_its_log(capsys, tmp_path, monkeypatch):
    import sys

    import facetl.experiments.tune as tune

    # a worker that dies before its first trial (a node without the data, a broken environment)
    monkeypatch.setattr(tune, "worker_command", lambda folder, index=None: [
        sys.executable, "-c", f"import sys; sys.exit('worker {index}: no such file: /scratch/faces')"])
    study = tmp_path / "study"
    result = in_process(capsys, "tune", *TINY, *SPACE, "--trials", "2", "--out", str(study), "--parallel", "2")
    one_line_error(result, "worker-0 failed (exit code 1): worker 0: no such file: /scratch/faces",
                   str(study / "workers" / "worker-0" / "launch.log"))
    jobs = json.loads((study / "jobs.json").read_text())["jobs"]
    assert {j["state"] for j in jobs.values()} == {"failed"}


def watch_queue(cluster, seen: list, done) -> None:
    """squeue's listing each time it changes while tune runs (what the test prints, to show the array ran)."""
    def jobs(listing: str) -> list:  # each job's id, name and state (not its ticking TIME)
        return [line.split()[:3] for line in listing.splitlines()]

    while not done.wait(1):
        listing = cluster.squeue()
        if not seen or jobs(listing) != jobs(seen[-1]):
            seen.append(listing)


@needs_smiles
@pytest.mark.slow
def test_two_workers_as_a_slurm_job_array_share_one_study(cluster, capsys, tmp_path, monkeypatch):
    import optuna

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    study = tmp_path / "study"
    seen, done = [], threading.Event()
    watcher = threading.Thread(target=watch_queue, args=(cluster, seen, done))
    watcher.start()
    try:
        result = in_process(capsys, "tune", *TINY, *SPACE, "--trials", "4", "--out", str(study), "--launcher",
                            "slurm", "--parallel", "2", "--cpus-per-run", "1", "--time", "10")
    finally:
        done.set()
        watcher.join()
    print(result.stdout)
    print("squeue while the workers ran:\n" + "".join(seen))
    print(f"squeue after the array ended:\n{cluster.squeue()}\njob completion log:\n{cluster.completed()}")
    assert result.returncode == 0, result.stderr + result.stdout

    jobs = json.loads((study / "jobs.json").read_text())["jobs"]
    assert sorted(jobs) == ["worker-0", "worker-1"] and {j["state"] for j in jobs.values()} == {"finished"}
    (array,) = {j["job_id"].split("_")[0] for j in jobs.values()}  # one array, its tasks 0 and 1
    assert sorted(j["job_id"] for j in jobs.values()) == [f"{array}_0", f"{array}_1"]
    assert cluster.completed().count("JobState=COMPLETED") == 2
    assert all(any(f"{array}_{k} facetl-study RUNNING" in listing for listing in seen) for k in (0, 1))

    rows = trials(study)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}
    for row in rows:  # every trial an ordinary run folder on the one split
        assert float(row["val_loss"]) == pytest.approx(selected_val_loss(study / row["run"]))
        assert (study / row["run"] / "split.csv").read_bytes() == (study / "split.csv").read_bytes()
    loaded = optuna.load_study(study_name="study", storage=f"sqlite:///{study / 'study.db'}")
    assert {t.user_attrs["worker"] for t in loaded.trials} == {0, 1}  # both array tasks ran trials
    assert (study / "best.yaml").is_file() and "best: " in result.stdout
