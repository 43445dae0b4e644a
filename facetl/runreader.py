"""Reading a run folder's records: history.csv, metrics.json, run.json and where its data is (data_paths.json).

Every command that looks at what a run did (reports, sweeps, folds, serve's model cards, --resume) reads
them here, so a damaged file is one line naming it, the same wherever it is read. The model itself
(best.pt) is facetl.inference.run's.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.history import parse as parse_history_cell
from facetl.record import RunRecord


def is_run_folder(folder: Path) -> bool:
    """A folder training made: run.json is written last; before it, config.yaml beside train.log. (An evaluation's
    folder has neither, and MLflow's copies of a run's files, under mlartifacts/, have no train.log.)"""
    folder = Path(folder)
    return (folder / "run.json").is_file() or ((folder / "config.yaml").is_file() and (folder / "train.log").is_file())


def read_history(folder: Path) -> list[dict]:
    """Every finished epoch from history.csv ([] when there is none); a row that is not an epoch's is a
    FacetlError naming the file and its line."""
    path = Path(folder) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append({k: parse_history_cell(k, v) for k, v in row.items()})
            except (TypeError, ValueError, AttributeError):
                cells = ", ".join(map(str, row.values()))[:80]
                raise FacetlError(f"{path} line {line} is not an epoch's row ({cells}); the file is damaged") from None
        return rows


def epochs_recorded(folder: Path) -> int:
    """How many epochs history.csv lists, without reading their values (0 without the file): what --resume
    compares with --epochs, so a damaged value does not stop a resume that reads its checkpoint instead."""
    path = Path(folder) / "history.csv"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return max(0, len(lines) - 1)  # less the header


def read_metrics(folder: Path) -> dict:
    """metrics.json: the metrics of the run's last evaluation (FacetlError naming the file when it is missing or
    is not a JSON mapping)."""
    path = Path(folder) / "metrics.json"
    values = _read_json(path)
    if not isinstance(values, dict):
        raise FacetlError(f"{path} is damaged (not a mapping of metric names to values)")
    return values


def read_record(folder: Path) -> RunRecord:
    """run.json: the run's record (FacetlError naming the file when it is missing or damaged)."""
    path = Path(folder) / "run.json"
    return RunRecord.read(_read_json(path), path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FacetlError(f"{path} not found; is {path.parent} a finished facetl run?") from None
    except (OSError, ValueError) as exc:
        raise FacetlError(f"{path} is damaged ({str(exc)[:120]})") from None


def locate_data(config: TrainConfig, folder: Path, data: str | None = None, images: str | None = None) -> TrainConfig:
    """The run's config with data paths that exist here: as recorded, or relative to the run folder when the
    run moved with its data, or as given (--data, --images). A message names every path it tried."""
    relative = {}
    if (folder / "data_paths.json").is_file():
        try:
            relative = json.loads((folder / "data_paths.json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise FacetlError(f"{folder / 'data_paths.json'} is damaged ({str(exc)[:120]}); give the data with "
                              "--data (and --images)") from None
        if not isinstance(relative, dict) or not all(isinstance(v, str) for v in relative.values()):
            raise FacetlError(f"{folder / 'data_paths.json'} is damaged (not a mapping of names to paths); give "
                              "the data with --data (and --images)")
    changes = {}
    for key, given in (("data", data), ("images", images)):
        recorded = getattr(config, key)
        if given:
            if not Path(given).expanduser().exists():
                raise FacetlError(f"--{key} {given}: not found")
            changes[key] = given
            continue
        if not recorded or Path(recorded).expanduser().exists():
            continue
        moved = folder / relative[key] if key in relative else None
        if moved is not None and moved.exists():
            changes[key] = str(moved.resolve())
            continue
        tried = [recorded] + ([str(moved)] if moved is not None else [])
        raise FacetlError(f"the run's --{key} is not here: tried {' and '.join(tried)}; give it with --{key} PATH")
    return dataclasses.replace(config, **changes)
