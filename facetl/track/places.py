"""Where a tracked run is written and what it is called: the run's names, its sweep and fold tags, and
tracking.json, the run folder's note of where it was tracked (a resumed run reopens the same tracked run)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from facetl.config import TrainConfig
from facetl.runfolder import atomic_write_json

TRACKING_FILE = "tracking.json"
DEFAULT_DB = "mlflow.db"


def read_tracking(folder: Path) -> dict:
    """What tracking.json remembers, per tracker ({} when the run was never tracked, or the file is unreadable)."""
    try:
        value = json.loads((folder / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def remember(folder: Path, tracker: str, where: dict) -> None:
    atomic_write_json(folder / TRACKING_FILE, {**read_tracking(folder), tracker: where})


def set_folder(config: TrainConfig) -> Path:
    """The folder the run belongs to: its sweep's or folds' folder, or the run folder itself."""
    return Path(config.track_group or config.out).expanduser().resolve()


def relative_name(config: TrainConfig) -> str:
    """The run's name within its set (POINT, fold-2, POINT/fold-2), or its folder's name."""
    run = Path(config.out).expanduser().resolve()
    if config.track_group:
        try:
            return run.relative_to(set_folder(config)).as_posix()
        except ValueError:
            pass
    return run.name


def set_tags(config: TrainConfig) -> dict[str, str]:
    """sweep and point for a sweep's run, folds and fold for a fold of K, both for a sweep point's fold."""
    if not config.track_group:
        return {}
    parts = relative_name(config).split("/")
    tags = {}
    fold = re.fullmatch(r"fold-(\d+)", parts[-1])
    if fold:
        tags["fold"] = fold.group(1)
        parts = parts[:-1]
    if parts:
        tags.update(sweep=set_folder(config).name, point="/".join(parts))
    else:
        tags["folds"] = set_folder(config).name
    return tags


def event_folder(config: TrainConfig) -> Path:
    """TensorBoard's folder: the run folder, or with --track-dir DIR/RUN (DIR/SWEEP/POINT for a sweep's run)."""
    if not config.track_dir:
        return Path(config.out).expanduser().resolve()
    name = relative_name(config)
    if config.track_group:
        name = f"{set_folder(config).name}/{name}"
    return Path(config.track_dir).expanduser().resolve() / name


def tracking_uri(config: TrainConfig) -> str:
    """--tracking-uri, a relative SQLite path made absolute (the run may be resumed elsewhere); by default an SQLite
    database inside the output it was given, never beside it: a sweep's or folds' folder (one store for the set),
    or the run folder. Runs of several commands share a store when --tracking-uri names one."""
    if config.tracking_uri is None:
        return "sqlite:///" + str(set_folder(config) / DEFAULT_DB)
    path = local_path(config.tracking_uri)
    if path is None:
        return config.tracking_uri
    if config.tracking_uri.startswith("sqlite:"):
        return "sqlite:///" + str(path)
    return path.as_uri()


def local_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI writes (sqlite:///FILE, file:///DIR, a plain path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).expanduser().resolve()
    if uri.startswith("file:"):
        return Path(re.sub(r"^file:(//)?", "", uri)).expanduser().resolve()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return None
    return Path(uri).expanduser().resolve()


def hyperparameters(config: TrainConfig, record) -> dict[str, str | float | int | bool]:
    """The resolved config and the recipe's choices, as flat values a tracker takes (lists joined, None 'none')."""
    values = {}
    for key, value in config.to_dict().items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        values[key] = "none" if value is None else value
    values["pretraining"] = record.weights.describe()
    values["trainable_params"] = record.trainable_params
    values["recipe"] = "; ".join(record.recipe) or "none"
    return values
