"""Issue 29, experiments and processes: a grid with a repeated value, a damaged jobs.json, a bad run.json field,
a bad or raced tune storage, a continued study that explores, a resumed run's figures, and a sweep that dies
with its children on SIGTERM.

Every case runs the real command in a fresh process (tests/commandline.py `facetl`), with real signals. Most
train several tiny runs, so the whole file is marked slow (3.5 min of `make test`'s 12): .ci/run runs it after
`make test`, and so does `make test-all`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from commandline import facetl, one_line_error
from conftest import write_image

pytestmark = pytest.mark.slow

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


# ---- 8, 19, 20. tune: a continued or shared study explores; a bad storage is not kept; two starts at once ----

TUNE = ["--weights", "none", "--img-size", "32", "--epochs", "1", "--strategy", "frozen", "--batch-size", "8",
        "--space", "lr=log:1e-4:1e-1"]


def trial_rows(study: Path) -> list[dict]:
    import csv

    with open(study / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_continued_study_draws_new_values_not_the_old_trials_again(data, tmp_path):
    study = tmp_path / "study"
    first = facetl("tune", "--data", str(data), *TUNE, "--trials", "3", "--out", str(study))
    assert first.returncode == 0, first.stderr
    old = {r["lr"] for r in trial_rows(study)}
    assert len(old) == 3
    again = facetl("tune", "--data", str(data), *TUNE, "--trials", "5", "--out", str(study))
    assert again.returncode == 0, again.stderr
    rows = trial_rows(study)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4"]
    new = [r["lr"] for r in rows[3:]]
    assert not set(new) & old, (new, old)  # before: trial 3 drew trial 0's lr, trial 4 trial 1's
    histories = {(study / r["run"] / "history.csv").read_text().split("\n", 1)[1].rsplit(",", 1)[0] for r in rows}
    assert len(histories) == 5


@pytest.mark.slow
def test_two_tunes_started_at_once_on_a_new_out_share_one_study_and_draw_apart(data, tmp_path):
    import subprocess
    import sys

    from commandline import ENV

    study = tmp_path / "study"
    command = [sys.executable, "-m", "facetl", "tune", "--data", str(data), *TUNE, "--trials", "4", "--out",
               str(study)]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in both]
    for process, (out, err) in zip(both, outputs):
        assert process.returncode == 0, err
        assert "Traceback" not in err and "IntegrityError" not in err, err
    rows = trial_rows(study)  # before: two workers that ended trials at once each started one more (5 of 4)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}, rows
    assert len(list(study.glob("trial-*"))) == 4
    assert len({r["lr"] for r in rows}) == len(rows), rows  # before: the two processes drew the same values


ANOTHER_WORKER_BETWEEN_COUNT_AND_TRIAL = """
import sys
import optuna
optimize = optuna.study.Study.optimize
def optimize_after_another_worker(self, *args, **kwargs):
    # the moment of the race: this worker counted 2 of --trials 3 and is about to make its trial, when another
    # worker makes one first (left RUNNING: that worker is still training it)
    if len(self.get_trials(deepcopy=False)) == 2:
        self.ask()
    return optimize(self, *args, **kwargs)
optuna.study.Study.optimize = optimize_after_another_worker
from facetl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_trial_made_after_another_worker_filled_the_study_does_not_train(data, tmp_path):
    import subprocess
    import sys

    from commandline import ENV

    study, script = tmp_path / "study", tmp_path / "race.py"
    script.write_text(ANOTHER_WORKER_BETWEEN_COUNT_AND_TRIAL)
    result = subprocess.run([sys.executable, str(script), "tune", "--data", str(data), *TUNE, "--trials", "3",
                             "--out", str(study)], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in study.glob("trial-*")) == ["trial-000", "trial-001"]  # before: trial-003 too
    rows = trial_rows(study)  # the other worker's trial, still running, is the third
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE"), ("2", "RUNNING")]
    assert "trial 3" not in result.stdout + result.stderr


@pytest.mark.parametrize("storage", ["garbage://x", "sqlite:////no/such/folder/study.db"])
def test_a_storage_that_does_not_open_is_not_kept_and_the_rerun_works(data, tmp_path, storage):
    study = tmp_path / "study"
    bad = facetl("tune", "--data", str(data), *TUNE, "--trials", "1", "--storage", storage, "--out", str(study))
    one_line_error(bad, "--storage", storage)
    assert not (study / "tune.json").exists()
    rerun = facetl("tune", "--data", str(data), *TUNE, "--trials", "1", "--out", str(study))
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((study / "tune.json").read_text())["storage"] == f"sqlite:///{study / 'study.db'}"


# ---- 16. a damaged jobs.json is one line, kept aside, and the sweep goes on ----

GRID = ["--grid", "lr=1e-3,1e-2"]


@pytest.fixture(scope="module")
def parallel_sweep(data, tmp_path_factory) -> tuple[list[str], Path]:
    out = tmp_path_factory.mktemp("parallel") / "grid"
    command = ["sweep", "--data", str(data), *TINY, *GRID, "--parallel", "2", "--out", str(out)]
    result = facetl(*command)
    assert result.returncode == 0, result.stderr
    return command, out


@pytest.mark.parametrize("damage", ['{"meta": {"points": ["lr-1e-3", "lr', "[]",
                                    '{"meta": {}, "jobs": {"lr-1e-3": {"name": "lr-1e-3", "state": "running"}}}'])
def test_a_damaged_jobs_json_is_one_line_and_the_sweep_continues(parallel_sweep, tmp_path, damage):
    import shutil

    command, finished = parallel_sweep
    out = tmp_path / "grid"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "lr-1e-2")  # one point to train again
    (out / "jobs.json").write_text(damage)
    one_line_error(facetl("sweep", "--status", str(out)), str(out / "jobs.json"), "damaged")
    assert (out / "jobs.json").read_text() == damage  # --status only reads it

    rerun = facetl(*command[:-1], str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    warnings = [line for line in rerun.stderr.splitlines() if "jobs.json" in line]
    assert len(warnings) == 1 and "damaged" in warnings[0], rerun.stderr
    assert "lr-1e-3: finished earlier" in rerun.stdout and "launching 1 of 2 points" in rerun.stdout
    (kept,) = [p for p in out.iterdir() if p.name.startswith("jobs.json.damaged")]
    assert kept.read_text() == damage and kept.name in warnings[0]
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    assert {jobs[p]["state"] for p in ("lr-1e-3", "lr-1e-2")} == {"finished"}
    status = facetl("sweep", "--status", str(out))
    assert status.returncode == 0 and "2 finished of 2 points" in status.stdout, status.stderr


# ---- 13. SIGTERM on a local sweep ends its trainings, records them, and the rerun finishes ----

def descendants(pid: int) -> set[int]:
    """Every living process under `pid`, from /proc (each process's parent is the 4th field of its stat)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_on_a_parallel_sweep_ends_its_children_and_the_rerun_finishes(data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from commandline import ENV

    out = tmp_path / "grid"
    command = [sys.executable, "-m", "facetl", "sweep", "--data", str(data), "--weights", "none", "--img-size",
               "96", "--epochs", "6", "--strategy", "full", "--batch-size", "4", *GRID, "--parallel", "2",
               "--out", str(out)]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    points = [out / "lr-1e-3", out / "lr-1e-2"]
    deadline = time.monotonic() + 300
    while not all((p / "history.csv").is_file() for p in points):  # both trainings under way
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.2)
    children = descendants(sweep.pid)
    assert len(children) >= 2
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(1)
    assert not [pid for pid in children if alive(pid)]  # before: both trainings went on under PID 1
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    assert {jobs[p.name]["state"] for p in points} == {"cancelled"}, jobs

    rerun = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr  # before: the run-folder lock of a living orphan refused it
    assert all((p / "metrics.json").is_file() for p in points)
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    assert {jobs[p.name]["state"] for p in points} == {"finished"}


# ---- 9. a run killed after its last epoch, then resumed, has its best epoch and training time ----

KILLED_BEFORE_THE_TEST_SPLIT = """
import os, signal, sys
import facetl.train.fit as fit
def killed(*args, **kwargs):  # every epoch written (last.pt, history.csv); killed before the test split
    os.kill(os.getpid(), signal.SIGKILL)
fit.final_evaluation = killed
from facetl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_after_its_last_epoch_resumes_with_its_best_epoch_and_training_time(data, tmp_path):
    import csv
    import subprocess
    import sys

    from commandline import ENV

    run = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_BEFORE_THE_TEST_SPLIT)
    killed = subprocess.run([sys.executable, str(script), "train", "--data", str(data), "--weights", "none",
                             "--img-size", "32", "--epochs", "3", "--strategy", "full", "--batch-size", "8",
                             "--out", str(run)],
                            capture_output=True, text=True, env=ENV, timeout=600)
    assert killed.returncode == -9 and not (run / "run.json").exists(), killed.stderr
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 3

    resumed = facetl("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((run / "run.json").read_text())
    best = min(history, key=lambda row: float(row["val_loss"]))
    assert record["best_epoch"] == int(best["epoch"])  # before: null
    assert record["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in history), abs=0.05)
    table = facetl("runs", str(run)).stdout.splitlines()[1]
    assert "n/a" not in table.split()[5:6] and f"{record['train_seconds']:.1f}" in table


@pytest.mark.slow
def test_sigterm_on_tune_with_two_workers_ends_them_and_the_rerun_replaces_their_trials(data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from commandline import ENV

    study = tmp_path / "study"
    command = [sys.executable, "-m", "facetl", "tune", "--data", str(data), "--weights", "none", "--img-size", "96",
               "--epochs", "6", "--strategy", "full", "--batch-size", "4", "--space", "lr=log:1e-4:1e-1",
               "--trials", "2", "--parallel", "2", "--out", str(study)]
    tune = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300  # the first trial makes the split, while the other worker waits for it
    while not (study / "trial-001" / "history.csv").is_file():  # the second trial is training
        assert tune.poll() is None and time.monotonic() < deadline, tune.communicate()
        time.sleep(0.2)
    children = descendants(tune.pid)
    tune.send_signal(signal.SIGTERM)
    _, err = tune.communicate(timeout=120)
    assert tune.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(1)
    assert not [pid for pid in children if alive(pid)]
    states = [job["state"] for job in json.loads((study / "jobs.json").read_text())["jobs"].values()]
    assert "cancelled" in states and not {"running", "pending"} & set(states), states  # one may have finished

    rerun = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    # an interrupted trial is FAIL at once (RUNNING, it would count towards --trials until its heartbeat's 2 min
    # grace ran out, and the rerun would have nothing to do): the rerun ran trials in its place
    states = [r["state"] for r in trial_rows(study)]
    assert states.count("COMPLETE") == 2 and "FAIL" in states and "RUNNING" not in states, states


# ---- 13. SIGTERM on a plain `facetl train` (scancel, a time limit, `kill`) stops it as Ctrl-C does ----

def test_sigterm_on_train_stops_it_as_ctrl_c_does_and_resume_finishes(data, tmp_path):
    import csv
    import signal
    import subprocess
    import sys
    import time

    from commandline import ENV

    run = tmp_path / "run"
    train = subprocess.Popen([sys.executable, "-m", "facetl", "train", "--data", str(data), "--weights", "none",
                              "--img-size", "48", "--epochs", "5", "--strategy", "full", "--batch-size", "4",
                              "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not (run / "history.csv").is_file() or not (run / "history.csv").read_text().count("\n") >= 2:
        assert train.poll() is None and time.monotonic() < deadline, train.communicate()  # an epoch written
        time.sleep(0.05)
    train.send_signal(signal.SIGTERM)
    _, err = train.communicate(timeout=120)
    # before: killed by the signal (-15), no word said, its lock file left behind
    assert train.returncode == 130 and "interrupted" in err and "--resume" in err and "Traceback" not in err, \
        (train.returncode, err)
    assert not (run / ".lock").exists()
    with open(run / "history.csv", newline="") as f:
        kept = len(list(csv.DictReader(f)))
    assert 1 <= kept < 5 and (run / "last.pt").is_file()

    resumed = facetl("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    with open(run / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 6))
    assert (run / "metrics.json").is_file()
