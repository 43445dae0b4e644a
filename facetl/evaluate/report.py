"""Write a split's evaluation into a run folder: metrics.json, the plots, and report.md tying them together."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from facetl.evaluate.metrics import classification_metrics
from facetl.evaluate.plots import plot_confusion, plot_curves, plot_errors, plot_roc
from facetl.runfolder import atomic_write_json, atomic_write_text


def write_evaluation(folder: Path, split: str, labels: np.ndarray, probs: np.ndarray, images: np.ndarray,
                     class_names: list[str], history: list[dict], run_info: dict, config: dict) -> dict:
    """Compute metrics on `split` and write metrics.json, plots and report.md into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = classification_metrics(labels, probs)
    metrics.update({
        "split": split,
        "class_names": class_names,
        "train_seconds": run_info.get("train_seconds"),
        "trainable_params": run_info.get("trainable_params"),
        "best_epoch": run_info.get("best_epoch"),
        "pretraining": run_info.get("weights_note"),
    })
    if history:
        plot_curves(history, folder / "curves.png", title=run_info.get("title", ""))
    plot_confusion(metrics["confusion_matrix"], class_names, folder / "confusion_matrix.png")
    plot_roc(labels, probs, class_names, folder / "roc.png")
    plot_errors(images, labels, probs, class_names, folder / "errors.png")
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_text(folder / "report.md", render_report(metrics, run_info, config, history))
    return metrics


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_report(metrics: dict, run_info: dict, config: dict, history: list[dict]) -> str:
    lines = [f"# {run_info.get('title', 'facetl run')}", ""]
    lines += [f"**Backbone weights:** {run_info.get('weights_note')}  ",
              f"**Strategy:** {config.get('strategy')} — {run_info.get('trainable_params', 0):,} trainable of "
              f"{run_info.get('total_params', 0):,} parameters  ",
              f"**Best epoch:** {run_info.get('best_epoch')} (selected by {config.get('select')})  ",
              f"**Training time:** {run_info.get('train_seconds', 0):.1f} s  ",
              f"**Data path:** {run_info.get('data_path_note', '')}", ""]
    lines += [f"## Metrics on the {metrics['split']} split ({metrics['n_images']} images)", "",
              "| accuracy | precision | recall | F1 | ROC-AUC |", "|---|---|---|---|---|",
              "| " + " | ".join(_fmt(metrics[k]) for k in ("accuracy", "precision", "recall", "f1", "roc_auc"))
              + " |", ""]
    if history:
        lines += ["## Training", "", "![curves](curves.png)", "",
                  "| epoch | train loss | train acc | val loss | val acc | seconds |", "|---|---|---|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.4f} | {h['val_loss']:.4f} | "
                  f"{h['val_acc']:.4f} | {h['seconds']:.1f} |" for h in history]
        lines.append("")
    lines += ["## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", "",
              "## ROC", "", "![roc](roc.png)", "",
              "## Most confident mistakes", "", "![errors](errors.png)", "",
              "## Configuration", "", "```yaml"]
    lines += [yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
