"""Runs that survive: SIGKILL and resume, a kill in the middle of a write, locks, NaN loss, changed data."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import facetl.train.loop
from facetl.cli import main
from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.train.fit import fit

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SMILES = DATASETS / "SMILEsmileD" / "SMILEs"
pytestmark = pytest.mark.skipif(not SMILES.is_dir(), reason=f"SMILEsmileD not found at {SMILES}")

TRAIN_ARGS = ["--data", str(SMILES), "--weights", "none", "--img-size", "32", "--limit", "240",
              "--strategy", "full", "--augment", "flip", "--batch-size", "16"]


def config(out: Path, epochs: int = 3) -> TrainConfig:
    return TrainConfig(data=str(SMILES), weights="none", img_size=32, limit=240, strategy="full", augment=["flip"],
                       batch_size=16, epochs=epochs, out=str(out))


def history_rows(folder: Path) -> int:
    try:
        with open(folder / "history.csv", newline="") as f:
            return len(list(csv.DictReader(f)))
    except FileNotFoundError:
        return 0


def assert_readable(folder: Path) -> None:
    """Every file a user would open parses completely."""
    for name in ("last.pt", "best.pt", "frozen.pt"):
        torch.load(folder / name, weights_only=True)
    with open(folder / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(set(r) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "strategy", "seconds"} for r in rows)


@pytest.mark.slow
def test_sigkill_after_the_first_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole = fit(config(tmp_path / "whole"), progress=False, quiet=True)
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "facetl", "train", *TRAIN_ARGS, "--epochs", "3",
                                "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while history_rows(run) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert history_rows(run) < 3, "the run finished before it could be killed"
    assert_readable(run)
    assert main(["train", "--resume", str(run)]) == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert history_rows(run) == 3
    assert resumed["confusion_matrix"] == whole.metrics["confusion_matrix"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert resumed[key] == pytest.approx(whole.metrics[key]), key


KILL_DURING_WRITE = textwrap.dedent("""
    # Kill this process while last.pt of epoch 2 is being written: after its bytes are half on disk.
    import os, signal, sys
    import facetl.runfolder as rf
    original = rf.atomic_write_bytes
    def dying_write(path, data):
        if str(path).endswith("last.pt") and os.path.exists(path):
            import tempfile
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                       dir=os.path.dirname(path))
            os.write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path, data)
    rf.atomic_write_bytes = dying_write
    import facetl.train.checkpoints
    facetl.train.checkpoints.atomic_torch_save.__globals__["atomic_write_bytes"] = dying_write
    from facetl.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_kill_in_the_middle_of_writing_a_checkpoint_leaves_the_run_readable_and_resumable(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "dying.py"
    script.write_text(KILL_DURING_WRITE)
    result = subprocess.run([sys.executable, str(script), "train", *TRAIN_ARGS, "--epochs", "3", "--out", str(run)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert list(run.glob(".last.pt.*.tmp")), "the half-written temporary file should be there"
    assert_readable(run)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1  # the last complete epoch
    assert main(["train", "--resume", str(run)]) == 0
    assert history_rows(run) == 3 and (run / "metrics.json").is_file()


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        code = main(["train", *TRAIN_ARGS, "--epochs", "1", "--out", str(run)])
        assert code == 2
        assert f"in use by a running facetl process (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale
    assert main(["train", *TRAIN_ARGS, "--epochs", "1", "--out", str(run)]) == 0
    assert not (run / ".lock").exists()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = facetl.train.loop.loss_fn
    calls = {"n": 0}

    def loss_that_breaks(logits, labels, weights=None, smoothing=0.0):
        calls["n"] += 1
        loss = real_loss(logits, labels, weights, smoothing)
        return loss * float("nan") if calls["n"] > 12 else loss  # 12 batches = the first epoch

    monkeypatch.setattr(facetl.train.loop, "loss_fn", loss_that_breaks)
    with pytest.raises(FacetlError, match="stopped at epoch 2: the training loss became nan .*try a lower --lr"):
        fit(config(tmp_path / "run"), progress=False, quiet=True)
    checkpoint = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())


def test_evaluate_refuses_data_that_changed_since_the_split(tmp_path, capsys):
    import shutil

    data = tmp_path / "faces"
    for name in ("negatives", "positives"):
        shutil.copytree(SMILES / name / f"{name}7", data / name, ignore=lambda d, files: sorted(files)[30:])
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--strategy", "full", "--out", str(run)]) == 0
    with open(run / "split.csv", newline="") as f:
        test_file = next(r["path"] for r in csv.DictReader(f) if r["split"] == "test")
    changed = data / test_file
    os.utime(changed, (time.time() + 100, time.time() + 100))
    assert main(["evaluate", str(run)]) == 2
    assert "the data changed since" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--allow-changed-data"]) == 0
    # training on the same split: one line naming what train can do (it has no --allow-changed-data)
    assert main(["train", "--data", str(data), "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--strategy", "full", "--split-file", str(run / "split.csv"), "--out", str(tmp_path / "again")]) == 2
    assert "leave out --split-file" in capsys.readouterr().err
    changed.unlink()
    assert main(["evaluate", str(run), "--allow-changed-data"]) == 2
    assert f"{test_file} is gone" in capsys.readouterr().err


def test_checkpoints_hold_the_frozen_part_once_and_resume_puts_the_model_back_together(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TRAIN_ARGS, "--strategy", "last-block", "--epochs", "2", "--out", str(run)]
    assert main(args) == 0
    frozen = torch.load(run / "frozen.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert "backbone.features.0.0.weight" in frozen and "head.2.weight" in last["model"]
    assert not set(frozen) & set(last["model"]), "a frozen tensor is written once, not in every epoch's last.pt"
    assert set(frozen) | set(last["model"]) == set(best["model"]), "best.pt alone still holds the whole model"
    trained_bytes = sum(t.numel() * t.element_size() for t in last["model"].values())
    assert (run / "last.pt").stat().st_size < 3.1 * trained_bytes, "last.pt: what trains and its two Adam moments"

    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0  # reassembled from last.pt + frozen.pt
    resumed = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], v) for k, v in frozen.items()), "the frozen part stayed frozen"

    torch.save({k: torch.zeros_like(v) for k, v in frozen.items()}, run / "frozen.pt")  # replaced by other data
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 2
    error = capsys.readouterr().err.strip()
    assert "frozen.pt" in error and "SHA-256" in error and len(error.splitlines()) == 1, error
