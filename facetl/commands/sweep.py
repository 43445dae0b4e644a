"""A grid of runs on one split: `facetl sweep --config BASE.yaml --grid lr=1e-3,1e-4 --grid strategy=...`.

The first run makes the split; every other run reuses its split.csv, so the rows of results.md differ
only by what the grid changes. Finished runs (with metrics.json) are skipped when the sweep is rerun.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from facetl.config import FIELDS, TrainConfig, build_config
from facetl.errors import FacetlError
from facetl.evaluate.metrics import summary_metrics
from facetl.evaluate.results import cell, run_row
from facetl.runfolder import atomic_write_csv, atomic_write_text, prepare_run_folder
from facetl.train.fit import check_output_places, fit

# results.csv: run, the metrics that sum a run up (the metric table's), then these
COLUMNS_AFTER_METRICS = ["val_acc", "train_seconds", "trainable_params", "pretraining", "recipe", "report"]
HEADERS_AFTER_METRICS = ["val acc", "train s", "trainable params", "pretraining",
                         "optimiser, peak LR, schedule, epochs"]


def columns() -> list[str]:
    return ["run", *(m.key for m in summary_metrics()), *COLUMNS_AFTER_METRICS]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise FacetlError(f"--grid {item!r}: write KEY=VALUE1,VALUE2")
        if key not in FIELDS or key in ("out", "data"):
            raise FacetlError(f"--grid {item!r}: {key!r} is not a configuration key that a grid can vary")
        # a list-valued key takes ';' between grid values (augment=flip;flip,jitter), scalars take ','
        separator = ";" if "list" in str(FIELDS[key].type) else ","
        grid[key] = [v.strip() for v in values.split(separator) if v.strip()]
        repeated = sorted({v for v in grid[key] if grid[key].count(v) > 1})
        if repeated:  # one point twice would train one folder twice
            raise FacetlError(f"--grid {item!r} gives {key}={', '.join(repeated)} more than once")
    return grid


def run_name(combo: dict[str, str]) -> str:
    return "_".join(f"{k}-{v}".replace(":", "").replace("/", "-").replace(",", "+") for k, v in combo.items()) or "base"


def grid_configs(base: TrainConfig, grid: dict[str, list[str]], out: str | Path) -> list[tuple[str, TrainConfig]]:
    """Each point's (name, config), in grid order. Every combination is checked before the first one starts, or
    a folder is made."""
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*grid.values())] or [{}]
    configs = [(run_name(c), build_config(c, base)) for c in combos]
    for _, config in configs:
        config.check()
        check_output_places(config, out, run=False)
    refuse_same_points(configs)
    return configs


def refuse_same_points(configs: list[tuple[str, TrainConfig]]) -> None:
    """Two points that are one run (1e-3 and 0.001) or share one folder name would train one folder twice."""
    by_config: dict[str, str] = {}
    names = [name for name, _ in configs]
    for name, config in configs:
        earlier = by_config.setdefault(repr(config), name)
        if earlier != name:
            raise FacetlError(f"--grid: points {earlier} and {name} are the same run; give each value once")
        if names.count(name) > 1:
            raise FacetlError(f"--grid: two points would share the folder {name}; give values that differ in name")


def sweep(base: TrainConfig, grid: dict[str, list[str]], out: str | Path, progress: bool = True,
          log=print, callbacks=()) -> list[dict]:
    return sweep_points(grid_configs(base, grid, out), out, progress, log, callbacks)


def sweep_points(configs: list[tuple[str, TrainConfig]], out: str | Path, progress: bool = True, log=print,
                 callbacks=()) -> list[dict]:
    """Train each (name, config) into OUT/name on the first one's split, as a grid's points are."""
    created = not Path(out).exists()
    out = prepare_run_folder(out)
    try:
        return _sweep(configs, out, progress, log, callbacks)
    except FacetlError:
        if created and not any(out.iterdir()):  # refused before any run began: leave nothing behind
            out.rmdir()
        raise


def _sweep(configs: list[tuple[str, TrainConfig]], out: Path, progress: bool, log, callbacks) -> list[dict]:
    rows, split_file = [], None
    for number, (name, config) in enumerate(configs, start=1):
        folder = out / name
        config = dataclasses.replace(config, out=str(folder), split_file=str(split_file) if split_file is not None
                                     else config.split_file)
        log(f"[{number}/{len(configs)}] {name}")
        if (folder / "metrics.json").is_file():
            log(f"  finished earlier: {folder / 'metrics.json'}")
        else:
            fit(config, resume=(folder / "last.pt").is_file(), progress=progress, callbacks=callbacks)
        split_file = split_file or folder / "split.csv"
        rows.append(run_row(name, folder))
        write_results(out, rows)
    return rows


def write_results(out: Path, rows: list[dict]) -> None:
    best = max(range(len(rows)), key=lambda i: rows[i]["val_acc"] or 0)
    atomic_write_csv(out / "results.csv", columns() + ["best"],
                     [[r[c] for c in columns()] + [i == best] for i, r in enumerate(rows)])
    atomic_write_text(out / "results.md", results_table(rows, best))


def results_table(rows: list[dict], best: int) -> str:
    metrics = summary_metrics()
    header = ["run", *(m.label for m in metrics), *HEADERS_AFTER_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(rows):
        name = f"**{r['run']}** (best)" if i == best else r["run"]
        cells = [name] + [m.format(r[m.key]) for m in metrics] + [cell(r[c], c) for c in COLUMNS_AFTER_METRICS[:-1]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Metrics on each run's test split; 'best' is the highest validation accuracy at the selected "
              "epoch (the test split does not choose).", ""]
    if any(r.get("attributes") for r in rows):
        lines[-1:] = ["Multi-attribute runs: each metric is the mean over the attributes (metrics.json has each "
                      "attribute's), and val acc is over every observed (image, attribute) label.", ""]
    lines += [f"- {r['run']}: {r['report']}" for r in rows]
    return "\n".join(lines) + "\n"
