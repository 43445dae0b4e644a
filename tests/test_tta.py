"""Test-time augmentation (--tta flip) in evaluate and predict: each image's class probabilities are the mean
of the image's and its mirror image's, for two-class and many-class runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from facetl.cli import main


def read_probs(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c.startswith("p_")]
    return [r["path"] for r in rows], np.array([[float(r[c]) for c in columns] for r in rows])


@pytest.fixture(scope="module", params=[2, 3], ids=["two classes", "three classes"])
def world(request, tmp_path_factory, torch_one_thread) -> dict[str, Path]:
    """A run trained on 32 px PNGs (so decoding is exact), and the same dataset with every image mirrored."""
    root = tmp_path_factory.mktemp(f"tta{request.param}")
    rng = np.random.default_rng(request.param)
    data, mirrored = root / "faces", root / "mirrored"
    for k in range(request.param):
        for folder in (data, mirrored):
            (folder / f"class{k}").mkdir(parents=True)
        for i in range(12):
            # a left-right gradient whose direction depends on the class, plus noise: the mirror image differs
            ramp = np.linspace(0, 200, 32)[None, :, None] * (1 if (i + k) % 2 else -1) % 256
            pixels = (rng.integers(0, 56, (32, 32, 3)) + ramp).astype(np.uint8)
            Image.fromarray(pixels).save(data / f"class{k}" / f"{i:02d}.png")
            ImageOps.mirror(Image.fromarray(pixels)).save(mirrored / f"class{k}" / f"{i:02d}.png")
    run = root / "run"
    assert main(["train", "--data", str(data), "--weights", "none", "--img-size", "32", "--strategy", "full",
                 "--epochs", "1", "--split", "0.5,0.25,0.25", "--out", str(run),
                 "--cache-dir", str(root / "cache")]) == 0
    return {"data": data, "mirrored": mirrored, "run": run, "root": root}


def evaluate(world, *extra: str) -> tuple[list[str], np.ndarray, dict, str]:
    assert main(["evaluate", str(world["run"]), "--device", "cpu", *extra]) == 0
    out = world["run"] / "eval-test"
    return (*read_probs(out / "predictions.csv"), json.loads((out / "metrics.json").read_text()),
            (out / "report.md").read_text())


@pytest.fixture(scope="module")
def evaluations(world) -> dict[str, tuple]:
    """The test split evaluated as it is, as mirrored files, and with --tta flip (the last one stays on disk)."""
    return {"plain": evaluate(world), "mirrored": evaluate(world, "--data", str(world["mirrored"]),
                                                            "--allow-changed-data"),
            "flip": evaluate(world, "--tta", "flip")}


def test_evaluate_with_flip_averages_the_probabilities_of_the_images_and_their_mirrored_files(world, evaluations):
    names, plain, metrics, report = evaluations["plain"]
    mirror_names, mirror, _, _ = evaluations["mirrored"]
    flip_names, flip, flip_metrics, flip_report = evaluations["flip"]
    assert names == mirror_names == flip_names and len(names) >= 6
    assert not np.allclose(plain, mirror, atol=1e-3)  # the mirror image is another input to this model
    np.testing.assert_allclose(flip, (plain + mirror) / 2, atol=2e-6)
    np.testing.assert_allclose(flip.sum(1), 1, atol=1e-5)
    assert len(metrics["class_names"]) == plain.shape[1]
    assert metrics["tta"] == "none" and "tta:" not in report
    assert flip_metrics["tta"] == "flip" and "tta: flip" in flip_report
    assert json.loads((world["run"] / "metrics.json").read_text())["tta"] == "none"  # training's own evaluation


def test_predict_with_flip_gives_what_evaluate_with_flip_gives(world, evaluations, tmp_path):
    _, flip, _, _ = evaluations["flip"]
    with open(world["run"] / "split.csv", newline="") as f:
        test_paths = [r["path"] for r in csv.DictReader(f) if r["split"] == "test"]
    out = tmp_path / "preds.csv"
    assert main(["predict", str(world["run"]), *(str(world["data"] / p) for p in test_paths), "--tta", "flip",
                 "--device", "cpu", "--out", str(out)]) == 0
    paths, predicted = read_probs(out)
    assert paths == [str(world["data"] / p) for p in test_paths]
    np.testing.assert_allclose(predicted, flip, atol=1e-5)
