"""Multi-attribute runs (--target COL1,COL2): one sigmoid per attribute, a masked loss, metrics per attribute.

The end-to-end tests use 60 real SMILEsmileD faces with their real Smiling label. Their Male and Young
columns are copied from the first rows of CelebA's list_attr_celeba.txt: they are NOT labels of these images
(nothing real to learn there), only realistic columns with a few values blanked as missing.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facetl.cli import main
from facetl.data.samples import Samples, strata
from facetl.errors import FacetlError
from facetl.train.loop import class_weights, loss_fn, masked_bce

TARGETS = "Smiling,Male,Young"


def test_a_missing_label_contributes_no_loss_and_no_gradient():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    labels = torch.tensor([[1, -1], [0, 1]])
    loss = loss_fn(logits, labels)
    loss.backward()
    assert logits.grad[0, 1] == 0  # the missing entry
    assert (logits.grad.flatten()[[0, 2, 3]] != 0).all()
    observed = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.isclose(loss, observed)  # the mean over observed entries only


def test_every_label_missing_is_a_zero_loss_not_nan():
    assert masked_bce(torch.zeros(2, 3), torch.full((2, 3), -1)).item() == 0


def test_pos_weight_per_attribute_counts_only_observed_values():
    labels = np.array([[1, 0], [0, -1], [0, 1], [0, 1]], dtype=np.int8)
    assert class_weights(labels, 2, torch.device("cpu")).tolist() == [3.0, 0.5]


def test_joint_strata_keep_every_combination_large_enough():
    rng = np.random.default_rng(0)
    labels = np.stack([rng.random(400) < 0.5, rng.random(400) < 0.3, rng.random(400) < 0.03], 1).astype(np.int8)
    key = strata(Samples(Path("."), [str(i) for i in range(400)], labels, ["a", "b", "c"]))
    assert np.bincount(key).min() >= 10
    assert len(set(key[labels[:, 2] == 1]) & set(key[labels[:, 2] == 0])) == 0  # the rarest one joined first
    common = labels[:, :2]  # two common attributes: the full joint label, four strata
    assert len(np.unique(strata(Samples(Path("."), [str(i) for i in range(400)], common, ["a", "b"])))) == 4


def small_table(root: Path, smiles: Path, celeba: Path, n: int = 60) -> tuple[Path, Path]:
    """n real SMILEsmileD images (half smiling) + Male/Young from CelebA rows (not these images' labels)."""
    images = root / "images"
    images.mkdir(parents=True)
    pos = sorted((smiles / "positives").rglob("*.jpg"))[: n // 2]
    neg = sorted((smiles / "negatives").rglob("*.jpg"))[: n - n // 2]
    with open(celeba) as f:
        f.readline()
        names = f.readline().split()
        rows = [f.readline().split() for _ in range(n)]
    male, young = 1 + names.index("Male"), 1 + names.index("Young")
    lines = ["filename,Smiling,Male,Young"]
    for i, (src, smiling) in enumerate([(p, 1) for p in pos] + [(p, -1) for p in neg]):
        shutil.copyfile(src, images / f"{i:03d}.jpg")
        m = "" if i % 17 == 3 else rows[i][male]  # a few missing values, masked, not dropped
        y = "" if i % 13 == 5 else rows[i][young]
        lines.append(f"{i:03d}.jpg,{smiling},{m},{y}")
    (root / "attrs.csv").write_text("\n".join(lines) + "\n")
    return root / "attrs.csv", images


@pytest.fixture(scope="module")
def table(shared_datasets, tmp_path_factory):
    smiles, celeba = shared_datasets / "SMILEsmileD" / "SMILEs", shared_datasets / "celeba_attributes" / \
        "list_attr_celeba.txt"
    if not smiles.is_dir() or not celeba.is_file():
        pytest.skip("SMILEsmileD or list_attr_celeba.txt not in shared/datasets")
    return small_table(tmp_path_factory.mktemp("multi"), smiles, celeba)


def train_args(table, out: Path) -> list[str]:
    csv_path, images = table
    return ["train", "--data", str(csv_path), "--images", str(images), "--target", TARGETS, "--weights", "none",
            "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--strategy", "full", "--augment", "none",
            "--out", str(out)]


@pytest.fixture(scope="module")
def run(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi-run") / "run"
    assert main(train_args(table, out) + ["--threshold", "balanced", "--balance", "loss"]) == 0
    return out


def test_missing_values_are_kept_as_minus_one_not_dropped(table):
    from facetl.data.load import load_samples

    samples = load_samples(str(table[0]), str(table[1]), TARGETS)
    assert samples.labels.shape == (60, 3) and samples.class_names == ["Smiling", "Male", "Young"]
    assert (samples.labels[:, 0] >= 0).all() and (samples.labels[:, 1:] == -1).sum() == 4 + 5


def test_training_writes_metrics_per_attribute_and_their_mean(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["attributes"]) == ["Smiling", "Male", "Young"]
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "base_rate"):
        values = [m[key] for m in metrics["attributes"].values()]
        assert metrics[key] == pytest.approx(np.mean(values))
    record = json.loads((run / "run.json").read_text())
    assert record["task"] == "multi-attribute" and len(record["thresholds"]) == 3
    assert record["threshold_rule"] == "balanced"
    report = (run / "report.md").read_text()
    assert "| Smiling |" in report and "| **mean** |" in report and "attributes.png" in report
    assert (run / "attributes.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(run / "split.csv")))
    assert all(len(r["label"]) == 3 for r in rows) and any("-" in r["label"] for r in rows)


def test_evaluate_prints_the_per_attribute_table(run, capsys):
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| Smiling |" in out and "| Male |" in out and "| Young |" in out and "| **mean** |" in out
    header = next(csv.reader(open(run / "eval-test" / "predictions.csv")))
    assert header[:4] == ["path", "true_Smiling", "Smiling", "p_Smiling"]


def test_predict_writes_a_probability_and_a_decision_per_attribute(run, table, tmp_path):
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(table[1]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 60
    for name in ("Smiling", "Male", "Young"):
        assert all(0 <= float(r[f"p_{name}"]) <= 1 and r[name] in ("0", "1") for r in rows)


def test_explain_picks_an_attribute_and_export_refuses_in_one_line(run, table, tmp_path):
    image = next(table[1].iterdir())
    assert main(["explain", str(run), str(image), "--class", "Male", "--out", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / f"{image.stem}.gradcam.png").is_file()
    from facetl.commands.export import export_run

    with pytest.raises(FacetlError, match="multi-attribute"):
        export_run(run)
    from facetl.gradcam import target_index
    from facetl.inference.run import load_run

    with pytest.raises(FacetlError, match="attributes are: Smiling, Male, Young"):
        target_index(load_run(run), "Bald")


def test_sweep_over_lr_has_a_row_per_run(table, tmp_path, capsys):
    args = train_args(table, tmp_path / "sweep")[1:]
    assert main(["sweep", *args, "--grid", "lr=1e-3,1e-4"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert [r["run"] for r in rows] == ["lr-1e-3", "lr-1e-4"]
    assert "mean over the attributes" in (tmp_path / "sweep" / "results.md").read_text()


def test_target_all_takes_every_binary_column_and_leaves_the_identity_column_out(tmp_path):
    from facetl.data.tables import read_attribute_columns

    (tmp_path / "img").mkdir()
    rows = ["file,identity,Smiling,Male"]
    for i in range(6):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(b"x")
        rows.append(f"{i}.jpg,person{i % 3},{1 if i % 2 else -1},{'' if i == 4 else 1 if i < 3 else 0}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    samples = read_attribute_columns(tmp_path / "t.csv", None, tmp_path / "img")
    assert samples.class_names == ["Smiling", "Male"]
    assert samples.labels[:, 1].tolist() == [1, 1, 1, 0, -1, 0]
