"""The GPU benchmark script runs without a GPU (--quick --device cpu), stops cleanly within its budget with every case
and column in its JSON and Markdown; and the GPU levers that a CPU can check: the recipe's batch size for the device,
the non-finite-loss check that a GPU reads only now and then, and --compile."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facetl.config import TrainConfig
from facetl.record import StartingWeights
from facetl.runtime import Precision
from facetl.train.loop import FiniteWatch, NonFiniteLoss, Optimisation
from facetl.train.recipe import complete_recipe

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"
DATASETS = REPO.parent / "shared" / "datasets"
CASES = ["study2-grid", "mnv2-64-grey-recipe", "vgg16-224-frozen", "vgg16-224-last-block", "vgg16-224-full",
         "vgg19-224-frozen-identities"]
needs_data = pytest.mark.skipif(not (DATASETS / "celebrity_faces").is_dir() or
                                not (DATASETS / "SMILEsmileD").is_dir(),
                                reason="the benchmark's cases are made from ../shared/datasets, absent here")


def bench(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return done, json.loads((out / "bench_gpu.json").read_text()), (out / "bench_gpu.md").read_text()


def every_case_and_column(results: dict, markdown: str) -> None:
    assert results["cases_in_order"] == CASES
    for case in CASES:
        assert set(results["cases"][case]) == {"ceiling", "plain", "facetl"}, case
        assert all(column["status"] for column in results["cases"][case].values())
        assert f"| {case} | ceiling |" in markdown
    assert markdown.count("| plain |") == len(CASES) and markdown.count("| facetl |") == len(CASES)
    environment = results["environment"]
    assert environment["torch"] == torch.__version__ and "bench_gpu.py" in environment["command"]
    assert "weights" in environment and environment["card"]


@needs_data
def test_a_tiny_budget_stops_cleanly_and_writes_every_case_and_column(tmp_path):
    _, results, markdown = bench(tmp_path / "out", "--budget-s", "1")
    every_case_and_column(results, markdown)
    assert results["status"].startswith("stopped: budget spent")
    statuses = [column["status"] for case in results["cases"].values() for column in case.values()]
    assert sum(s == "not run: budget spent" for s in statuses) >= len(CASES) * 2  # the later ones were never started
    assert "card: none (CPU)" in markdown and "--budget-s 1" in markdown


@needs_data
@pytest.mark.slow  # about 2 minutes on an idle 2-core machine: 6 facetl processes and 12 small measurements
def test_quick_measures_every_column_of_every_case_on_a_cpu(tmp_path):
    work = tmp_path / "work"
    _, results, markdown = bench(tmp_path / "out", "--work", str(work))
    every_case_and_column(results, markdown)
    assert results["status"] == "complete"
    for name, case in results["cases"].items():
        for column, figures in case.items():
            if not figures["status"].startswith("see "):
                assert figures["status"] == "done", (name, column, figures["status"])
        runs = case["facetl"]["runs"]
        assert len(runs) == (4 if name == "study2-grid" else 1)
        for run in runs:  # the wall-time split every run records, validation apart from training
            assert {"data and model", "frozen features", "training", "validation"} <= set(run["wall"])
            assert run["test_acc"] is not None
    assert results["cases"]["vgg16-224-full"]["ceiling"]["images_per_s"] > 0
    assert results["cases"]["mnv2-64-grey-recipe"]["plain"]["images_per_s"] > 0
    assert "features cached" in results["cases"]["vgg19-224-frozen-identities"]["facetl"]["runs"][0]["data_path"]
    assert "facetl / ceiling" in markdown
    assert not list(REPO.glob("runs/*/bench_gpu*"))  # data and runs live in --work, not in the repository


def test_the_recipe_chooses_a_batch_size_for_the_device_and_keeps_a_given_one():
    weights = StartingWeights("none")
    on_cpu, _ = complete_recipe(TrainConfig(data="x"), weights, 10_000, "cpu")
    on_gpu, gpu_lines = complete_recipe(TrainConfig(data="x"), weights, 10_000, "cuda")
    assert on_cpu.batch_size == 32 and on_gpu.batch_size == 128
    assert "batch_size 128 (a GPU is kept busy only by larger batches)" in gpu_lines[-1]
    given, _ = complete_recipe(TrainConfig(data="x", batch_size=16), weights, 10_000, "cuda")
    assert given.batch_size == 16


def test_a_gpu_reads_the_loss_check_late_but_still_names_the_first_bad_batch():
    """On a GPU the loss is checked every few steps, not every step (each read waits for the GPU): the error must
    still name the batch where the loss stopped being finite, and that its inputs were fine."""
    model = torch.nn.Linear(2, 1)
    opt = Optimisation(model, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu",
                       enabled=False), Precision("fp32", torch.device("cpu")), 4)
    watch = FiniteWatch(check_every=3)
    z = torch.zeros(4, 2)
    watch.note(opt, torch.tensor(0.5), z, 1)
    watch.note(opt, torch.tensor(float("nan")), z, 2)  # not read yet: no wait for the device
    with pytest.raises(NonFiniteLoss, match="at batch 2: the steps grew too large"):
        watch.note(opt, torch.tensor(float("inf")), z, 3)


def test_an_immediate_check_names_the_batch_as_before():
    model = torch.nn.Linear(2, 1)
    opt = Optimisation(model, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu",
                       enabled=False), Precision("fp32", torch.device("cpu")), 4)
    with pytest.raises(NonFiniteLoss, match="became nan at batch 7: its inputs were already not finite"):
        FiniteWatch(check_every=1).note(opt, torch.tensor(float("nan")), torch.full((4, 2), np.nan), 7)


@pytest.mark.slow  # torch.compile's first compile takes a minute or more on 2 cores
def test_compile_trains_and_is_recorded(tmp_path):
    from tests.commandline import facetl
    from tests.test_cli import folder_dataset

    data = folder_dataset(tmp_path / "faces")
    done = facetl("train", "--data", str(data), "--weights", "none", "--backbone", "mobilenet_v2", "--img-size", "32",
                  "--epochs", "1", "--device", "cpu", "--compile", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compile: true" in (tmp_path / "run" / "config.yaml").read_text()
