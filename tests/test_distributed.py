"""Two processes on the CPU (gloo), launched by `facetl train --nproc 2` through torchrun."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facetl.cli import main

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SMILES = DATASETS / "SMILEsmileD" / "SMILEs"
pytestmark = pytest.mark.skipif(not SMILES.is_dir(), reason=f"SMILEsmileD not found at {SMILES}")

# VGG-16 has no batch norm, so even random weights give each image its own score (a random MobileNetV2 gives
# all images nearly one score, and ROC-AUC would then rank float noise)
# fp32: the one-process evaluation recomputes the frozen part in other batches than the distributed run's
# cache did, and bf16 rounding would then differ by more than the tolerance; fp32 keeps that below 1e-6.
ARGS = ["--data", str(SMILES), "--weights", "none", "--backbone", "vgg16", "--img-size", "32", "--limit", "300",
        "--strategy", "last-block", "--augment", "flip", "--batch-size", "16", "--lr", "1e-3", "--precision", "fp32"]
# The gathered probabilities are the distributed run's own; the one-process evaluation recomputes the frozen
# part in other batches, so float rounding can flip an image that sits on the threshold or swap two nearly
# tied scores. Stated tolerance: at most one image's prediction, and 0.01 of ROC-AUC.


def facetl(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facetl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


@pytest.mark.slow  # two torchrun processes (half a minute): CI's slow set
def test_two_process_metrics_equal_a_one_process_evaluation_of_the_same_checkpoint(tmp_path):
    run = tmp_path / "ddp"
    process = facetl("train", "--nproc", "2", *ARGS, "--epochs", "2", "--out", str(run))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "2 processes, batch 16 per process" in output
    distributed = json.loads((run / "metrics.json").read_text())

    assert main(["evaluate", str(run)]) == 0  # one process, same best.pt, same test split
    single = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert distributed["n_images"] == single["n_images"] == 30
    flipped = abs(np.asarray(distributed["confusion_matrix"]) - np.asarray(single["confusion_matrix"])).sum() / 2
    assert flipped <= 1
    assert distributed["accuracy"] == pytest.approx(single["accuracy"], abs=1 / 30 + 1e-9)
    assert distributed["roc_auc"] == pytest.approx(single["roc_auc"], abs=0.01)

    one = tmp_path / "one"
    assert main(["train", *ARGS, "--epochs", "2", "--out", str(one)]) == 0
    listing = lambda folder: sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert [name for name in listing(run) if name != "eval-test"] == listing(one)
    assert (run / "split.csv").read_bytes() == (one / "split.csv").read_bytes()


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (torchrun puts its ranks in their own process group)."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find torchrun's ranks")
def test_a_killed_two_process_run_resumes(tmp_path):
    run = tmp_path / "ddp"
    process = facetl("train", "--nproc", "2", *ARGS, "--no-cache", "--epochs", "4", "--out", str(run))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            with open(run / "history.csv", newline="") as f:
                if len(list(csv.DictReader(f))) >= 1:
                    break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    kill_tree(process.pid)  # the launcher and both ranks, as an out-of-memory killer or a lost machine would
    process.communicate()
    with open(run / "history.csv", newline="") as f:
        done = len(list(csv.DictReader(f)))
    assert 1 <= done < 4, "the run should have been killed part way"

    resumed = facetl("train", "--resume", str(run), "--nproc", "2")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert "resuming after epoch" in output
    with open(run / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    assert (run / "metrics.json").is_file()
