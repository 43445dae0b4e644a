"""Reopening a run anywhere: the typed run record, device and precision chosen by the machine that uses
the run, and checkpoints that hold data, never code."""
from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from commandline import facetl, in_process, one_line_error
from facetl.cli import main
from facetl.record import RunRecord
from facetl.inference.run import load_run

SMILES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A small last-block run (a frozen part, so precision on each side of the cut matters)."""
    if not SMILES.is_dir():
        pytest.skip(f"SMILEsmileD not found at {SMILES}")
    out = tmp_path_factory.mktemp("runs") / "smile"
    cache = tmp_path_factory.mktemp("cache")
    assert main(["train", "--data", str(SMILES), "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--limit", "120", "--strategy", "last-block", "--out", str(out), "--cache-dir", str(cache)]) == 0
    return out


def test_backbones_lists_the_built_in_ones_in_a_fresh_process():
    result = facetl("backbones")
    assert result.returncode == 0, result.stderr
    for name in ("mobilenet_v2", "vgg16", "vgg19"):
        assert name in result.stdout


def test_the_record_in_run_json_is_the_checkpoints_and_drives_reopening(run):
    reopened = load_run(run)
    recorded = RunRecord.from_dict(json.loads((run / "run.json").read_text()))
    # run.json is written after training, so it alone also knows the wall time of the training stages
    assert recorded.wall_seconds and dataclasses.replace(recorded, wall_seconds={}) == reopened.record
    assert reopened.record.preprocessing.size == 32 and reopened.record.class_names == ["negatives", "positives"]
    assert 0 < reopened.record.cut < len(reopened.model.backbone.features)


def pretend_trained_on_a_gpu_with_fp16(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    checkpoint = torch.load(target / "best.pt", weights_only=True)
    checkpoint["config"].update(device="cuda", precision="fp16")
    checkpoint["record"]["trained_with"] = {"device": "cuda:0", "precision": "fp16", "frozen_precision": "fp16",
                                           "processes": 1}
    torch.save(checkpoint, target / "best.pt")
    (target / "config.yaml").write_text((target / "config.yaml").read_text().replace("precision: auto",
                                                                                      "precision: fp16"))
    return target


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
def test_a_run_trained_with_fp16_on_cuda_evaluates_and_predicts_on_a_cpu(run, tmp_path, capsys):
    gpu_run = pretend_trained_on_a_gpu_with_fp16(run, tmp_path / "gpu-run")
    assert main(["evaluate", str(gpu_run)]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    here = json.loads((gpu_run / "eval-test" / "metrics.json").read_text())
    assert here["n_images"] == trained["n_images"]
    assert here["accuracy"] == pytest.approx(trained["accuracy"], abs=1 / trained["n_images"] + 1e-9)
    image = next((SMILES / "positives").rglob("*.jpg"))
    assert main(["predict", str(gpu_run), str(image)]) == 0
    assert "probability" in capsys.readouterr().out
    # asking for what this machine lacks is one clear line, not a traceback
    one_line_error(facetl("evaluate", str(gpu_run), "--device", "cuda"), "no CUDA GPU")
    one_line_error(facetl("predict", str(gpu_run), str(image), "--precision", "fp16"), "fp16 needs a CUDA GPU")


class WritesAMarker:
    """Unpickling this runs code: it creates a file. A checkpoint holding it must be refused unread."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def booby_trapped(path: Path, marker: Path, **extra) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "trap": WritesAMarker(marker), **extra}, f)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(run, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    shared = tmp_path / "shared-run"
    shutil.copytree(run, shared)
    booby_trapped(shared / "best.pt", marker)
    booby_trapped(shared / "last.pt", marker)
    image = next((SMILES / "negatives").rglob("*.jpg"))
    one_line_error(facetl("evaluate", str(shared)), "best.pt", "refused")
    one_line_error(in_process(capsys, "predict", str(shared), str(image)), "best.pt", "refused")
    one_line_error(in_process(capsys, "train", "--resume", str(shared), "--epochs", "2"), "last.pt", "refused")
    weights = booby_trapped(tmp_path / "weights.pth", marker)
    one_line_error(in_process(capsys, "train", "--data", str(SMILES), "--weights", str(weights), "--limit", "40",
                              "--out", str(tmp_path / "new")), "weights.pth", "refused")
    assert not marker.exists()
    assert (shared / "config.yaml").is_file() and (shared / "metrics.json").is_file()  # nothing lost
