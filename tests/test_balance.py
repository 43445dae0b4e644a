"""Class imbalance and the decision threshold: --balance none|loss|sampler and --threshold 0.5|f1|balanced.

SMILEsmileD is 72% 'not smiling': at threshold 0.5 a model can score 72% accuracy while never saying
'smiling'. These tests hold the parts a user relies on: balanced draws, weights from the training split,
a threshold chosen on validation that every later use of the run applies.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facetl.cli import main
from facetl.evaluate.metrics import choose_threshold, classification_metrics, decide
from facetl.commands.export import onnx_metadata
from facetl.inference.run import load_run
from facetl.train.loop import balanced_order, class_weights

SMILES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"


def test_the_balanced_sampler_draws_every_class_equally_and_is_seeded():
    labels = np.array([0] * 900 + [1] * 100)
    index = np.arange(1000)
    order = balanced_order(index, labels, seed=3, epoch=2)
    assert len(order) == 1000
    assert 0.45 < labels[order].mean() < 0.55, "the minority class should be half of the draws"
    assert np.array_equal(order, balanced_order(index, labels, seed=3, epoch=2))  # a resumed run draws the same
    assert not np.array_equal(order, balanced_order(index, labels, seed=3, epoch=3))


def test_class_weights_come_from_the_training_labels():
    two = class_weights(np.array([0] * 75 + [1] * 25), 2, torch.device("cpu"))
    assert two.tolist() == [3.0]  # pos_weight: negatives per positive
    three = class_weights(np.array([0] * 60 + [1] * 30 + [2] * 10), 3, torch.device("cpu"))
    assert three.tolist() == pytest.approx([100 / 180, 100 / 90, 100 / 30])


def test_a_threshold_chosen_on_validation_finds_the_minority_class():
    """Positives score 0.30-0.45, negatives 0.00-0.25: at 0.5 nothing is called positive."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 72 + [1] * 28)
    p = np.where(labels == 1, rng.uniform(0.30, 0.45, 100), rng.uniform(0.0, 0.25, 100))
    probs = np.stack([1 - p, p], axis=1)
    plain = classification_metrics(labels, probs)
    assert plain["accuracy"] == pytest.approx(0.72) and plain["balanced_accuracy"] == 0.5 and plain["recall"] == 0
    for rule in ("balanced", "f1"):
        t = choose_threshold(labels, probs, rule)
        assert 0.25 < t < 0.30, (rule, t)
        assert classification_metrics(labels, probs, t)["balanced_accuracy"] == 1.0
    assert choose_threshold(labels, probs, "0.4") == 0.4
    assert choose_threshold(labels, np.full((5, 3), 1 / 3), "f1") is None  # many classes: the most probable
    assert decide(np.array([[0.6, 0.4]]), 0.35)[0] == 1 and decide(np.array([[0.6, 0.4]]), None)[0] == 0


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory) -> Path:
    if not SMILES.is_dir():
        pytest.skip(f"SMILEsmileD not found at {SMILES}")
    out = tmp_path_factory.mktemp("balance") / "run"
    cache = tmp_path_factory.mktemp("balance-cache")
    assert main(["train", "--data", str(SMILES), "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--limit", "240", "--strategy", "last-block", "--balance", "loss", "--threshold", "balanced",
                 "--precise-bn", "off", "--out", str(out), "--cache-dir", str(cache)]) == 0
    return out


def test_the_chosen_threshold_travels_with_the_run(balanced_run, tmp_path, capsys):
    record = json.loads((balanced_run / "run.json").read_text())
    assert record["threshold_rule"] == "balanced" and 0 < record["threshold"] < 1
    assert load_run(balanced_run).record.threshold == record["threshold"]  # best.pt carries it too
    metrics = json.loads((balanced_run / "metrics.json").read_text())
    assert metrics["threshold"] == record["threshold"] and "balanced_accuracy" in metrics
    report = (balanced_run / "report.md").read_text()
    assert f"threshold {record['threshold']:.3f}" in report and "balanced accuracy" in report
    assert (balanced_run / "precision_recall.png").is_file()
    assert "class-weighted loss, pos_weight" in (balanced_run / "train.log").read_text()

    images = sorted((SMILES / "positives" / "positives7").glob("*.jpg"))[:20]
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(balanced_run), *map(str, images), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        for row in csv.DictReader(f):  # the label is the run's decision, not the larger probability
            expected = "positives" if float(row["p_positives"]) >= record["threshold"] else "negatives"
            assert row["label"] == expected, row

    assert main(["evaluate", str(balanced_run)]) == 0
    evaluated = json.loads((balanced_run / "eval-test" / "metrics.json").read_text())
    assert evaluated["threshold"] == record["threshold"]
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    run = load_run(balanced_run)
    exported = onnx_metadata(run.record.preprocessing, run.class_names, "t", "mobilenet_v2", run.record.threshold)
    assert json.loads(exported["facetl.threshold"]) == record["threshold"]
