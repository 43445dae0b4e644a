"""Calibration and fairness across groups: ECE and reliability.png in every report, --calibrate temperature,
and --groups COLUMN (metrics per person, the largest gap between people).

The pure parts are checked on made-up logits; one tiny run, made overconfident on purpose (a random VGG-16
as a frozen feature extractor, a linear head trained at lr 1, every fourth label flipped so nobody can be
sure), checks that the temperature it gets is used by evaluate, predict and the ONNX graph.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from facetl.cli import main
from facetl.data.augment import to_float
from facetl.data.images import decode_image
from facetl.evaluate.metrics import (choose_threshold, expected_calibration_error, fit_temperature, group_metrics,
                                     negative_log_likelihood, reliability_bins, scaled_probabilities)
from facetl.evaluate.plots import plot_reliability
from facetl.evaluate.report import SplitResult, write_evaluation
from facetl.preprocessing import Preprocessing
from facetl.record import Calibration, RunRecord, RuntimeUsed, StartingWeights


def _logits(n: int, classes: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits whose calibrated scale is 1: `scale` > 1 makes them overconfident."""
    rng = np.random.default_rng(seed)
    if classes == 2:
        labels = rng.integers(0, 2, n)
        z = rng.logistic(size=n) + np.where(labels == 1, 1.0, -1.0)  # log-odds that are right at scale 1
        labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
        return labels, (scale * z)[:, None]
    z = rng.normal(size=(n, classes)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return labels, scale * z


@pytest.mark.parametrize("classes", [2, 5])
def test_temperature_undoes_over_and_under_confidence(classes):
    for scale in (4.0, 0.3):
        labels, logits = _logits(4000, classes, scale)
        t = fit_temperature(logits, labels)
        assert t == pytest.approx(scale, rel=0.15), (classes, scale, t)  # dividing by T restores scale 1
        assert negative_log_likelihood(logits, labels, t) < negative_log_likelihood(logits, labels)
        before, after = scaled_probabilities(logits), scaled_probabilities(logits, t)
        assert expected_calibration_error(labels, after) < expected_calibration_error(labels, before)
        assert np.array_equal(before.argmax(1), after.argmax(1))  # the most probable class never changes


def test_ece_is_near_zero_for_honest_probabilities_and_counts_every_image():
    labels, logits = _logits(20000, 2, 1.0)
    honest = scaled_probabilities(logits)
    assert expected_calibration_error(labels, honest) < 0.02
    bins = reliability_bins(labels, honest)
    assert sum(b["count"] for b in bins) == 20000 and len(bins) == 15
    certain = np.array([[0.0, 1.0], [1.0, 0.0]])  # probability exactly 1 lands in the last bin
    assert reliability_bins(np.array([1, 0]), certain)[-1]["count"] == 1
    assert expected_calibration_error(np.array([0, 0]), certain) == pytest.approx(0.5)


def test_the_reliability_diagram_shows_ece_counts_and_the_diagonal(tmp_path):
    labels, logits = _logits(500, 2, 3.0)
    probs = scaled_probabilities(logits)
    fig = plot_reliability(labels, probs, ["not_Male", "Male"], tmp_path / "reliability.png", "test", 1.7)
    top, counts = fig.axes
    assert f"ECE {expected_calibration_error(labels, probs):.3f}" in top.get_title() and "T=1.70" in top.get_title()
    assert "perfectly calibrated" in [t.get_text() for t in top.get_legend().get_texts()]
    shown = sorted(int(t.get_text()) for t in counts.texts)
    assert shown == sorted(b["count"] for b in reliability_bins(labels, probs) if b["count"])
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_group_metrics_find_the_group_the_model_fails():
    labels = np.array([1, 0] * 10 + [1, 0] * 10 + [1, 1, 1])
    p = np.concatenate([np.where(labels[:20] == 1, 0.9, 0.1),   # anna: always right
                        np.where(labels[20:40] == 1, 0.1, 0.9),  # ben: always wrong
                        [0.9, 0.9, 0.9]])                        # cleo: 3 images, one class
    groups = ["anna"] * 20 + ["ben"] * 20 + ["cleo"] * 3
    result = group_metrics(labels, np.stack([1 - p, p], 1), groups)
    rows = {r["group"]: r for r in result["per_group"]}
    assert rows["anna"]["accuracy"] == 1.0 and rows["ben"]["accuracy"] == 0.0 and rows["anna"]["n"] == 20
    assert rows["cleo"]["roc_auc"] is None and rows["cleo"]["base_rate"] == 1.0  # one class: no ROC-AUC
    gap = result["gaps"]["accuracy"]
    assert gap == {"gap": 1.0, "lowest": "ben", "highest": "anna"}
    assert result["groups_in_gaps"] == 2  # cleo's 3 images are listed, not compared
    only_negatives = group_metrics(np.array([0, 0]), np.array([[0.8, 0.2], [0.3, 0.7]]), ["x", "x"])
    assert only_negatives["per_group"][0]["f1"] is None  # F1 of the positive class in a group without one


def _record(**extra) -> RunRecord:
    return RunRecord("test run", StartingWeights("none"), Preprocessing(32, (0.5,) * 3, (0.5,) * 3),
                     ["not_Male", "Male"], 0, 10, 10, "whole backbone trains", RuntimeUsed("cpu", "fp32", "fp32"),
                     "2024-01-01T00:00:00", best_epoch=1, train_seconds=1.0, **extra)


def test_report_has_calibration_and_a_group_table_and_old_records_read_as_uncalibrated(tmp_path):
    labels, logits = _logits(60, 2, 3.0)
    probs = scaled_probabilities(logits)
    images = np.zeros((60, 8, 8, 3), dtype=np.uint8)
    groups = [f"person{i % 3}" for i in range(60)]
    calibration = Calibration(2.5, "val", 40, 0.2, 0.05, 0.9, 0.6)
    record = _record(temperature=2.5, calibration=calibration)
    metrics = write_evaluation(tmp_path, SplitResult("test", labels, probs, images, None, groups, "identity"),
                               record, [], {"select": "val_loss"})
    assert metrics["ece"] == pytest.approx(expected_calibration_error(labels, probs))
    assert metrics["temperature"] == 2.5 and metrics["groups"]["by"] == "identity"
    report = (tmp_path / "report.md").read_text()
    assert "temperature T=2.500 fitted on validation: ECE before 0.2000 after 0.0500" in report
    assert "## Per group (identity)" in report and "| person1 | 20 |" in report and "**largest gap**" in report
    assert "![reliability](reliability.png)" in report and (tmp_path / "reliability.png").is_file()
    with open(tmp_path / "groups.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == ["person0", "person1", "person2", "largest gap"]

    write_evaluation(tmp_path, SplitResult("test", labels, probs, images), _record(), [], {})
    assert not (tmp_path / "groups.csv").exists(), "a stale groups.csv stayed beside metrics without groups"
    old = {k: v for k, v in record.to_dict().items() if k not in ("temperature", "calibration")}
    assert RunRecord.from_dict(old).temperature == 1.0 and RunRecord.from_dict(old).calibration is None
    assert RunRecord.from_dict(record.to_dict()).calibration == calibration


@pytest.fixture(scope="module")
def overconfident_run(tmp_path_factory) -> dict:
    """Bright images are 'Smiling', every fourth label flipped; 4 people. A random VGG-16 separates the
    images, and a head trained at lr 1 is sure of every answer, a quarter of which are wrong."""
    root = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = []
    for i in range(64):
        bright = i % 2
        pixels = rng.integers(0, 256, (24, 24, 3)) // 2 + (128 if bright else 64)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img" / f"{i:02d}.jpg")
        label = bright if i % 4 != 3 else 1 - bright
        rows.append(f"{i:02d}.jpg,{1 if label else -1},p{i % 4}")
    (root / "attrs.csv").write_text("filename,Smiling,person,Young\n" + "".join(r + ",1\n" for r in rows))
    run = root / "run"
    assert main(["train", "--data", str(root / "attrs.csv"), "--images", str(root / "img"), "--target", "Smiling",
                 "--backbone", "vgg16", "--weights", "none", "--img-size", "32", "--strategy", "frozen", "--lr", "1",
                 "--epochs", "6", "--split", "0.5,0.25,0.25", "--calibrate", "temperature", "--threshold", "balanced",
                 "--groups", "person", "--out", str(run), "--cache-dir", str(root / "cache")]) == 0
    return {"root": root, "run": run}


def test_an_overconfident_run_is_softened_and_every_use_of_it_applies_t(overconfident_run, tmp_path):
    from facetl.commands.export import export_onnx
    from facetl.inference.onnx import OnnxClassifier
    from facetl.inference.run import load_run
    from facetl.runtime import Runtime

    run_folder, root = overconfident_run["run"], overconfident_run["root"]
    record = json.loads((run_folder / "run.json").read_text())
    t, calibration = record["temperature"], record["calibration"]
    assert t > 1 and calibration["temperature"] == t
    assert calibration["nll_after"] < calibration["nll_before"]
    assert f"temperature T={t:.3f} fitted on validation: ECE before" in (run_folder / "train.log").read_text()
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert metrics["temperature"] == t and metrics["ece"] is not None and "temperature T=" in metrics["calibration"]
    assert {r["group"] for r in metrics["groups"]["per_group"]} <= {"p0", "p1", "p2", "p3"}
    assert (run_folder / "groups.csv").is_file() and (run_folder / "reliability.png").is_file()

    # predict: sigmoid(logit / T), closer to 0.5 than the raw sigmoid, on the same side
    run = load_run(run_folder)
    assert run.record.temperature == t
    runtime = Runtime.for_inference("cpu", "fp32")
    with open(run_folder / "split.csv", newline="") as f:
        split = list(csv.DictReader(f))
    val = [r for r in split if r["split"] == "val"]
    files = [root / "img" / r["path"] for r in val]
    out = tmp_path / "predictions.csv"
    # fp32: on a CPU with native bf16, predict's auto precision computes the frozen part in bf16
    assert main(["predict", str(run_folder), *map(str, files), "--out", str(out), "--device", "cpu",
                 "--precision", "fp32"]) == 0
    with open(out, newline="") as f:
        predicted = np.array([float(r["p_Smiling"]) for r in csv.DictReader(f)])
    images = np.stack([decode_image(p, 32)[0] for p in files])
    np.testing.assert_allclose(predicted, run.classify(images, runtime)[:, 1], atol=1e-5)
    with torch.inference_mode():
        z = run.model.forward_suffix(run.image_source(None, runtime).prepare(to_float(images, runtime.device)),
                                     run.record.cut).float().numpy()[:, 0]
    np.testing.assert_allclose(predicted, 1 / (1 + np.exp(-z / t)), atol=1e-5)
    raw = 1 / (1 + np.exp(-z))
    assert np.all(np.abs(predicted - 0.5) < np.abs(raw - 0.5) + 1e-9)  # T > 1: less sure, on the same side
    assert np.all((predicted >= 0.5) == (raw >= 0.5))
    # the threshold was chosen on the calibrated probabilities of validation
    labels = np.array([1 if r["label"] == "Smiling" else 0 for r in val])
    assert record["threshold"] == pytest.approx(choose_threshold(labels, np.stack([1 - predicted, predicted], 1),
                                                                 "balanced"), abs=1e-3)

    # evaluate: the same probabilities as the training-time report, and groups on request
    assert main(["evaluate", str(run_folder), "--groups", "person", "--device", "cpu"]) == 0
    evaluated = json.loads((run_folder / "eval-test" / "metrics.json").read_text())
    assert evaluated["temperature"] == t and evaluated["ece"] == pytest.approx(metrics["ece"], abs=1e-4)
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    assert (run_folder / "eval-test" / "groups.csv").is_file()

    # ONNX: the graph divides by T, so it gives predict's numbers
    onnx_file = export_onnx(run_folder, tmp_path / "model.onnx")
    onnx = OnnxClassifier(onnx_file)
    assert json.loads(onnx.metadata["facetl.temperature"]) == pytest.approx(t)
    np.testing.assert_allclose(onnx.classify(images)[:, 1], run.classify(images, runtime)[:, 1], atol=1e-4)
