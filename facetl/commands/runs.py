"""`facetl runs DIR`: every run folder under DIR as one table, sortable by any metric.

It answers "which of my 40 runs was best" from the runs' own records (config.yaml, history.csv, run.json,
metrics.json), read as data through facetl.runreader: nothing is unpickled, and a damaged folder is a row with a
note rather than a traceback. Sweeps, folds and tune studies are all folders of runs, so one table reads them all.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from facetl.errors import FacetlError
from facetl.evaluate.metrics import summary_metrics
from facetl.runfolder import atomic_write_csv, atomic_write_text
from facetl.runreader import is_run_folder, read_history, read_metrics, read_record


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    higher_is_better: bool | None = None  # None: not a number to sort by
    decimals: int | None = None           # None: shown as it is

    def format(self, value) -> str:
        if value is None:
            return "n/a"
        if self.key == "lr":
            return f"{value:.2g}"
        return f"{value:.{self.decimals}f}" if self.decimals is not None else str(value)


def columns() -> list[Column]:
    """The table's columns; the metrics are the metric table's (facetl.evaluate.metrics), with its directions."""
    return [Column("run", "run"), Column("backbone", "backbone"), Column("strategy", "strategy"),
            Column("lr", "lr", False), Column("epochs", "epochs", False), Column("best_epoch", "best epoch", False),
            *(Column(m.key, m.label, m.higher_is_better, m.decimals) for m in summary_metrics()),
            Column("val_loss", "val loss", False, 4), Column("val_acc", "val acc", True, 4),
            Column("train_seconds", "train s", False, 1), Column("state", "state"), Column("note", "note")]


def find_runs(root: Path) -> list[Path]:
    """Every run folder under `root` (root itself included), in path order; a run's own subfolders (its
    evaluations) are not runs, so the walk does not go into a run."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        if is_run_folder(Path(folder)):
            found.append(Path(folder))
            subfolders.clear()
        else:
            subfolders.sort()
    return sorted(found)


def run_table_row(folder: Path, root: Path) -> dict:
    """One run as a row: what it trained (config.yaml), its best epoch's validation figures (history.csv),
    its test metrics (metrics.json) and whether it finished (run.json). What cannot be read is a note."""
    row = {c.key: None for c in columns()}
    row["run"] = "." if folder == root else folder.relative_to(root).as_posix()
    notes = []
    config = _read_config(folder, notes)
    row.update(backbone=config.get("backbone"), strategy=config.get("strategy"), lr=_number(config.get("lr")),
               epochs=_number(config.get("epochs")))
    history = _attempt(lambda: read_history(folder), notes) or []
    record = _attempt(lambda: read_record(folder), notes) if (folder / "run.json").is_file() else None
    metrics = _attempt(lambda: read_metrics(folder), notes) if (folder / "metrics.json").is_file() else None
    if record is not None:
        record = _typed_record(record, notes)
    best_epoch = record.best_epoch if record else (min(history, key=_loss)["epoch"]
                                                   if history else None)
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    row.update(best_epoch=best_epoch, val_loss=best.get("val_loss"), val_acc=best.get("val_acc"),
               train_seconds=record.train_seconds if record else (sum(h["seconds"] or 0 for h in history) or None))
    if metrics is not None:
        row.update({m.key: _number(metrics.get(m.key)) for m in summary_metrics()})
    damaged = record is None and (folder / "run.json").is_file()
    row["state"] = "damaged" if damaged else _state(record, metrics, history)
    row["note"] = "; ".join(notes) or None
    return row


# run.json fields the table shows, and the type each must have; another is a note, and the cell n/a
RECORD_FIELDS = {"best_epoch": (int,), "train_seconds": (int, float), "stopped_after": (int,),
                 "stopped_because": (str,)}


def _typed_record(record, notes: list[str]):
    """The record with each shown field of the wrong type (a hand-edited or damaged run.json) set to None and
    named in a note, so one bad field neither breaks the table nor hides the rest of the row."""
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
    if record.stopped_because:  # an observer's reason: 'pruned (...)' from facetl tune
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


def runs_table(root: str | Path, sort: str | None = None) -> list[dict]:
    """Every run under `root` as a row, sorted by `sort` (best first: descending for scores, ascending for
    losses and costs; runs without the value last), or by path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FacetlError(f"{root} is not a folder")
    sortable = [c for c in columns() if c.higher_is_better is not None]
    by_name = {_name(n): c for c in sortable for n in (c.key, c.header)}  # val_loss, val-loss or 'val loss'
    if sort is not None and _name(sort) not in by_name:
        raise FacetlError(f"--sort {sort}: not a column to sort by; choose one of "
                          f"{', '.join(c.key for c in sortable)}")
    folders = find_runs(root)
    if not folders:
        raise FacetlError(f"no runs under {root} (a run folder has the config.yaml or run.json facetl train writes)")
    rows = [run_table_row(folder, root) for folder in folders]
    if sort is not None:
        column = by_name[_name(sort)]
        present = [r for r in rows if r[column.key] is not None]
        present.sort(key=lambda r: r[column.key], reverse=column.higher_is_better)
        rows = present + [r for r in rows if r[column.key] is None]
    return rows


def _name(text: str) -> str:
    return text.strip().lower().replace("-", "_").replace(" ", "_")


def text_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows as aligned text for a terminal, or as a markdown table."""
    shown = [c for c in columns() if c.key != "note" or any(r["note"] for r in rows)]
    cells = [[c.format(r[c.key]) if c.key != "note" else (r["note"] or "") for c in shown] for r in rows]
    headers = [c.header for c in shown]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in [headers, *cells]) + "\n"


def check_table_out(out: Path, overwrite: bool) -> None:
    """Refuse before reading any run: an unknown kind of file, or one that exists without --overwrite."""
    if out.suffix.lower() not in (".csv", ".md"):
        raise FacetlError(f"--out {out}: write a .csv or .md table")
    if out.is_dir():
        raise FacetlError(f"--out {out} is a folder; give the table's file name")
    if out.exists() and not overwrite:
        raise FacetlError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FacetlError(f"--out {out}: its folder {out.parent} does not exist")


def write_table(rows: list[dict], out: Path) -> None:
    if out.suffix.lower() == ".md":
        atomic_write_text(out, text_table(rows, markdown=True))
    else:
        keys = [c.key for c in columns()]
        atomic_write_csv(out, keys, [[r[k] for k in keys] for r in rows])
