"""One finished run as a row of a results table (sweeps and cross-validation folds share it)."""
from __future__ import annotations

from pathlib import Path

from facetl.evaluate.metrics import summary_metrics
from facetl.runreader import read_history, read_metrics, read_record


def run_row(name: str, folder: Path) -> dict:
    """A finished run's test metrics (those of the tables that sum a run up), its validation accuracy at the
    selected epoch, and what it cost."""
    metrics = read_metrics(folder)
    record = read_record(folder)
    history = read_history(folder)
    best = next((h for h in history if h["epoch"] == record.best_epoch), {})
    return {"run": name, **{m.key: metrics.get(m.key) for m in summary_metrics()},
            "test_images": metrics.get("n_images"), "val_acc": best.get("val_acc"),
            "train_seconds": record.train_seconds, "trainable_params": record.trainable_params,
            "pretraining": record.weights.describe(), "pretrained": record.weights.pretrained,
            "recipe": _recipe(folder, history), "report": str(folder / "report.md"),
            "attributes": len(record.class_names) if record.multi_attribute else None}


def _recipe(folder: Path, history: list[dict]) -> str:
    """What trained it, as resolved (the recipe fills keys a grid or config left out): 'adamw 0.002 onecycle, 19
    epochs'; epochs actually run when early stopping cut them short."""
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    lr = config.get("lr")
    text = f"{config.get('optimizer') or 'adam'} {float(lr):.2g} {config.get('scheduler') or 'none'}" if lr else ""
    if config.get("strategy") == "gradual":
        text += f", {config.get('unfreeze')}"
    return f"{text}, {len(history)} epochs"


def cell(value, column: str = "") -> str:
    """A value as a markdown table shows it: n/a, seconds to a tenth, 4 decimals, thousands separated."""
    if value is None:
        return "n/a"
    if column == "train_seconds":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
