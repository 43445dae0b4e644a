"""What a reader sees in the evaluation pictures and report: AUCs, selected epoch, file names, loss jumps."""
from __future__ import annotations

import numpy as np

from facetl.evaluate.plots import plot_curves, plot_errors, plot_roc, short_name
from facetl.evaluate.metrics import classification_metrics
from facetl.evaluate.report import SplitResult, render_report, write_evaluation
from facetl.preprocessing import Preprocessing
from facetl.record import RunRecord, RuntimeUsed, StartingWeights


def _scores(classes: int, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative but imperfect softmax probabilities."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _history(val_losses: list[float]) -> list[dict]:
    return [{"epoch": e, "train_loss": 0.5, "train_acc": 0.8, "val_loss": v, "val_acc": 0.75, "seconds": 1.0}
            for e, v in enumerate(val_losses, 1)]


def _record(class_names: list[str], best_epoch: int) -> RunRecord:
    return RunRecord("test run", StartingWeights("none"), Preprocessing(32, (0.5,) * 3, (0.5,) * 3), class_names,
                     0, 10, 10, "whole backbone trains", RuntimeUsed("cpu", "fp32", "fp32"), "2024-01-01T00:00:00",
                     best_epoch=best_epoch, train_seconds=1.0)


def test_two_class_roc_legend_gives_the_auc(tmp_path):
    from sklearn.metrics import roc_auc_score
    labels, probs = _scores(2)
    fig = plot_roc(labels, probs, ["neutral", "smile"], tmp_path / "roc.png")
    curves = [t for t in _legend(fig.axes[0]) if not t.startswith("chance")]
    assert curves == [f"smile (AUC {roc_auc_score(labels, probs[:, 1]):.3f})"]
    assert (tmp_path / "roc.png").stat().st_size > 0


def test_few_classes_roc_legend_gives_each_class_auc(tmp_path):
    labels, probs = _scores(4)
    legend = _legend(plot_roc(labels, probs, list("abcd"), tmp_path / "roc.png").axes[0])
    assert [t.split(" (")[0] for t in legend if "AUC" in t] == ["a", "b", "c", "d", "macro-average", "chance"]


def test_many_classes_roc_is_one_sorted_bar_per_present_class(tmp_path):
    names = [f"celebrity {k}" for k in range(24)]
    labels, probs = _scores(24, n=600)
    labels[labels == 5] = 6                      # class 5 absent from this split: no bar for it
    fig = plot_roc(labels, probs, names, tmp_path / "roc.png")
    bars_ax, roc_ax = fig.axes[:2]
    widths = [bar.get_width() for bar in bars_ax.patches]
    ticks = [t.get_text() for t in bars_ax.get_yticklabels()]
    assert len(widths) == 23 and widths == sorted(widths)
    assert set(ticks) == set(names) - {"celebrity 5"}
    assert any(t.startswith("micro-average (AUC") for t in _legend(roc_ax))
    assert any(t.startswith("macro-average (AUC") for t in _legend(roc_ax))


def test_curves_mark_the_selected_epoch_on_both_panels(tmp_path):
    fig = plot_curves(_history([0.7, 0.5, 0.6]), tmp_path / "curves.png", best_epoch=2, select="val_loss")
    assert "selected epoch 2 (by val_loss)" in [t.get_text() for t in fig.legends[0].get_texts()]
    for ax in fig.axes:  # a vertical line at epoch 2 on the loss and the accuracy panel
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())


def test_error_captions_name_the_files_and_only_shown_images_are_read(tmp_path):
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9], [0.4, 0.6]])
    names = ["negatives/negatives7/1.jpg", "negatives/negatives7/2.jpg", "positives/positives7/123.jpg",
             "positives/positives7/4.jpg", "negatives/negatives7/a_very_long_file_name_indeed_0005.jpg"]
    read = []

    class Lazy:
        def __getitem__(self, i):
            read.append(i)
            return np.zeros((8, 8, 3), np.uint8)

        def __len__(self):
            return len(labels)

    fig = plot_errors(SplitResult("test", labels, probs, Lazy(), names), ["neutral", "smile"], tmp_path / "errors.png",
                      count=2)
    captions = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert captions[0] == "negatives7/2.jpg\ntrue neutral\npred smile 0.80"
    assert captions[1] == "positives7/123.jpg\ntrue smile\npred neutral 0.70"
    assert sorted(read) == [1, 2]
    long = short_name(names[4])
    assert long.startswith("…") and long.endswith("_indeed_0005.jpg") and len(long) == 24  # fits under the image


def test_report_flags_a_validation_loss_jump(tmp_path):
    labels, probs = _scores(2, n=40)
    names = [f"class{k}/{i}.jpg" for i, k in enumerate(labels)]
    result = SplitResult("test", labels, probs, np.zeros((40, 8, 8, 3), np.uint8), names)
    metrics = write_evaluation(tmp_path, result, _record(["a", "b"], 5), _history([0.70, 0.55, 1.40, 0.50, 0.49]),
                               {"select": "val_loss"})
    report = (tmp_path / "report.md").read_text()
    sentence = next(line for line in report.splitlines() if "Validation loss jumped" in line)
    assert "at epoch 3 to 1.4000, 2.5x the lowest before it (0.5500 at epoch 2;" in sentence
    assert report.index("| 5 |") < report.index(sentence) < report.index("## Confusion matrix")  # under the table
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix", "n_images",
            "best_epoch"} <= set(metrics)
    assert {p.name for p in tmp_path.glob("*.png")} == {"curves.png", "confusion_matrix.png", "roc.png",
                                                        "precision_recall.png", "reliability.png", "errors.png"}


def test_report_says_nothing_about_a_smooth_validation_loss():
    labels, probs = _scores(2, n=40)
    metrics = {**classification_metrics(labels, probs), "split": "test", "class_names": ["a", "b"]}
    report = render_report(metrics, _record(["a", "b"], 3), {"select": "val_loss"},
                           _history([0.70, 0.55, 0.50, 0.52, 0.51]))
    assert "jump" not in report.lower()
