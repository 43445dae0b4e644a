"""`facetl runs DIR`: every run folder under DIR as one table, sortable by any metric.

It answers "which of my 40 runs was best" from the runs' own records (config.yaml, history.csv, run.json,
metrics.json), each read by the one reader (facetl.experiments.results.read_run): nothing is unpickled, and a
damaged folder is a row with a note rather than a traceback. Sweeps, folds and tune studies are all folders of
runs, so one table reads them all. Sorting is best first in each metric's direction, as the metric table has it,
and the best run is named by the metric that chose it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from facetl.errors import FacetlError
from facetl.evaluate.metrics import best_of, best_words, metric, summary_metrics
from facetl.experiments.results import read_run
from facetl.runfolder import atomic_write_csv, atomic_write_text
from facetl.runreader import is_run_folder
from facetl.tables import aligned_text, table_text


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
            *(Column(m.key, m.label, m.higher_is_better, m.decimals) for m in map(metric, ("val_loss", "val_acc"))),
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


def runs_table(root: str | Path, sort: str | None = None) -> list[dict]:
    """Every run under `root` as a row, sorted by `sort` (best first: descending for scores, ascending for
    losses and costs; runs without the value last), or by path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FacetlError(f"{root} is not a folder")
    column = _sort_column(sort) if sort is not None else None
    folders = find_runs(root)
    if not folders:
        raise FacetlError(f"no runs under {root} (a run folder has the config.yaml or run.json facetl train writes)")
    rows = [read_run(folder, "." if folder == root else folder.relative_to(root).as_posix()) for folder in folders]
    if column is not None:
        present = [r for r in rows if r[column.key] is not None]
        present.sort(key=lambda r: r[column.key], reverse=column.higher_is_better)
        rows = present + [r for r in rows if r[column.key] is None]
    return rows


def _sort_column(sort: str) -> Column:
    sortable = [c for c in columns() if c.higher_is_better is not None]
    by_name = {_name(n): c for c in sortable for n in (c.key, c.header)}  # val_loss, val-loss or 'val loss'
    if _name(sort) not in by_name:
        raise FacetlError(f"--sort {sort}: not a column to sort by; choose one of "
                          f"{', '.join(c.key for c in sortable)}")
    return by_name[_name(sort)]


def _name(text: str) -> str:
    return text.strip().lower().replace("-", "_").replace(" ", "_")


def text_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows as aligned text for a terminal, or as a markdown table."""
    shown = [c for c in columns() if c.key != "note" or any(r["note"] for r in rows)]
    cells = [[c.format(r[c.key]) if c.key != "note" else (r["note"] or "") for c in shown] for r in rows]
    headers = [c.header for c in shown]
    return table_text(".md", headers, cells) if markdown else aligned_text(headers, cells)


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


def best_line(rows: list[dict], sort: str | None = None) -> str:
    """'best: RUN (the lowest val loss)': by the --sort column when it is a metric, else by val loss, the metric
    runs select their epochs by unless told otherwise."""
    key = _sort_column(sort).key if sort is not None else "val_loss"
    try:
        metric(key)
    except KeyError:
        key = "val_loss"  # lr, epochs, seconds: an order, not a verdict
    best = best_of(rows, key)
    return f"best: {rows[best]['run']} ({best_words(key)}, {metric(key).format(rows[best][key])})" \
        if best is not None else f"best: none (no run has a {metric(key).label})"
