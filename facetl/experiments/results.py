"""The one reader that turns a run folder into a row: sweeps, folds, tune studies and `facetl runs` all read runs
through `read_run`.

A row has what the run trained (config.yaml), its selected epoch's validation figures (history.csv), its test
metrics (metrics.json, the metric table's summary ones), what it cost and whether it finished (run.json). The
files are read as data (facetl.runreader: nothing is unpickled); what cannot be read is n/a and a note in the row,
never a traceback.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from facetl.errors import FacetlError
from facetl.evaluate.metrics import summary_metrics
from facetl.runreader import read_history, read_metrics, read_record

# run.json fields a row shows, and the type each must have; another is a note, and the cell n/a
RECORD_FIELDS = {"best_epoch": (int,), "train_seconds": (int, float), "stopped_after": (int,),
                 "stopped_because": (str,)}


def read_run(folder: Path, name: str, strict: bool = False) -> dict:
    """Run folder `folder` as a row named `name`. A damaged file is a note in the row (`facetl runs` lists what it
    can); `strict` (a sweep's or folds' own finished trial, about to be summed up) raises it as one line instead."""
    folder, notes = Path(folder), []
    config = _read_config(folder, notes)
    history = _attempt(lambda: read_history(folder), notes) or []
    record = _attempt(lambda: read_record(folder), notes) if (folder / "run.json").is_file() else None
    metrics = _attempt(lambda: read_metrics(folder), notes) if (folder / "metrics.json").is_file() else None
    if record is not None:
        record = _typed_record(record, notes)
    best_epoch = record.best_epoch if record else (min(history, key=_loss)["epoch"] if history else None)
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    if strict and notes:
        raise FacetlError(notes[0])
    row = {"run": name, "backbone": config.get("backbone"), "strategy": config.get("strategy"),
           "lr": _number(config.get("lr")), "epochs": _number(config.get("epochs")), "best_epoch": best_epoch,
           **{m.key: _number((metrics or {}).get(m.key)) for m in summary_metrics()},
           "val_loss": best.get("val_loss"), "val_acc": best.get("val_acc"), "epochs_run": len(history),
           "train_seconds": record.train_seconds if record else (sum(h["seconds"] or 0 for h in history) or None),
           "state": "damaged" if record is None and (folder / "run.json").is_file() else
           _state(record, metrics, history), "note": "; ".join(notes) or None,
           "test_images": (metrics or {}).get("n_images")}
    return {**row, **_what_it_was(folder, config, history, record)}


def _what_it_was(folder: Path, config: dict, history: list[dict], record) -> dict:
    weights = record.weights if record is not None else None
    return {"trainable_params": record.trainable_params if record else None,
            "pretraining": weights.describe() if weights is not None else None,
            "pretrained": weights.pretrained if weights is not None else None,
            "recipe": _recipe(config, history), "report": str(folder / "report.md"),
            "attributes": len(record.class_names) if record is not None and record.multi_attribute else None}


def _recipe(config: dict, history: list[dict]) -> str:
    """What trained it, as resolved (the recipe fills keys a grid or config left out): 'adamw 0.002 onecycle, 19
    epochs'; epochs actually run when early stopping cut them short."""
    try:
        lr = float(config.get("lr"))
    except (TypeError, ValueError):
        lr = None
    text = f"{config.get('optimizer') or 'adam'} {lr:.2g} {config.get('scheduler') or 'none'}" if lr else ""
    if config.get("strategy") == "gradual":
        text += f", {config.get('unfreeze')}"
    return f"{text}, {len(history)} epochs"


def _typed_record(record, notes: list[str]):
    """The record with each shown field of the wrong type (a hand-edited or damaged run.json) set to None and
    named in a note, so one bad field neither breaks the row nor hides the rest of it."""
    wrong = {key: getattr(record, key) for key, kinds in RECORD_FIELDS.items()
             if getattr(record, key) is not None and (not isinstance(getattr(record, key), kinds)
                                                      or isinstance(getattr(record, key), bool))}
    for key, value in wrong.items():
        notes.append(f"run.json is damaged: {key} {str(value)[:40]} is not a "
                     f"{'number' if key != 'stopped_because' else 'text'}")
    return dataclasses.replace(record, **dict.fromkeys(wrong)) if wrong else record


def _loss(row: dict) -> float:
    return row["val_loss"] if row["val_loss"] is not None else float("inf")


def _state(record, metrics, history) -> str:
    if record is None or metrics is None:
        return "unfinished" + ("" if history else " (no epoch finished)")
    if record.stopped_because:  # a callback's reason: 'pruned (...)' from facetl tune
        return "stopped: " + record.stopped_because.split(" (")[0]
    if record.stopped_after:
        return f"finished (early stop after epoch {record.stopped_after})"
    return "finished"


def _read_config(folder: Path, notes: list[str]) -> dict:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        notes.append(f"config.yaml is damaged ({str(exc).splitlines()[0][:80]})")
        return {}
    if not isinstance(values, dict):
        notes.append("config.yaml is damaged (not a mapping)")
        return {}
    return values


def _attempt(read, notes: list[str]):
    try:
        return read()
    except FacetlError as exc:
        notes.append(str(exc))
        return None


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
