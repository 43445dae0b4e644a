"""Where a tracked run is written and what it is called: the run's names, its sweep and fold tags, and
tracking.json, the run folder's note of where it was tracked (a resumed run reopens the same tracked run).

tracking.json names a place inside the run folder relative to it, and remembers which folder it was written
for: a run copied or moved elsewhere (cp -r, mv) goes on with the places that travelled with it, and never
with the original's other places, which belong to the original; its tracking there starts afresh."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from facetl.config import TrainConfig
from facetl.runfolder import atomic_write_json

TRACKING_FILE = "tracking.json"
RUN_FOLDER = "run_folder"  # in each tracker's entry of tracking.json: the folder the entry was written in
DEFAULT_DB = "mlflow.db"


def read_tracking(folder: Path) -> dict:
    """What tracking.json remembers, per tracker ({} when the run was never tracked, or the file is unreadable)."""
    try:
        value = json.loads((folder / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def remember(folder: Path, tracker: str, where: dict) -> None:
    atomic_write_json(folder / TRACKING_FILE, {**read_tracking(folder),
                                               tracker: {**where, RUN_FOLDER: str(folder.resolve())}})


def stored_place(folder: Path, place: Path) -> str:
    """How tracking.json names a place: relative to the run folder when inside it (it travels with a copy)."""
    try:
        return place.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(place.resolve())


def known_place(folder: Path, stored: str, entry: dict) -> Path | None:
    """The place a tracker's entry of tracking.json names, for resuming the run in `folder`: a relative one inside
    this folder; an absolute one only when the entry was written for this folder (None: the run was copied or
    moved, and that place is the original's)."""
    path = Path(stored)
    if not path.is_absolute():
        return folder.resolve() / path
    was = entry.get(RUN_FOLDER)
    if was is not None and Path(was) == folder.resolve():
        return path
    if was is None and folder.resolve() in [path, *path.parents]:  # written before RUN_FOLDER was
        return path
    return None


def stored_uri(folder: Path, uri: str) -> dict:
    """tracking.json's note of an MLflow store: {"store": PATH} for an SQLite file inside the run folder,
    relative to it, else {"tracking_uri": URI}."""
    path = local_path(uri)
    if path is not None and uri.startswith("sqlite:"):
        place = stored_place(folder, path)
        if not Path(place).is_absolute():
            return {"store": place}
    return {"tracking_uri": uri}


def known_uri(folder: Path, known: dict) -> str | None:
    """The store a resumed run reopens its MLflow run in, as `known_place` decides (a server's: only when the run
    was not copied or moved, whose MLflow run is the original's)."""
    if isinstance(known.get("store"), str):
        return "sqlite:///" + str(known_place(folder, known["store"], known))
    uri = known.get("tracking_uri")
    if not isinstance(uri, str):
        return None
    path = local_path(uri)
    if path is None:
        return None if moved_from(folder, known) else uri
    return uri if known_place(folder, str(path), known) is not None else None


def moved_from(folder: Path, entry: dict | None = None) -> Path | None:
    """The folder a tracker's entry of tracking.json (by default, any entry) was written in, when that is not
    `folder` (the run was copied or moved), else None."""
    entries = [entry] if entry is not None else [e for e in read_tracking(folder).values() if isinstance(e, dict)]
    for was in (e.get(RUN_FOLDER) for e in entries):
        if isinstance(was, str) and Path(was) != folder.resolve():
            return Path(was)
    return None


def relocated(config: "TrackingSettings", folder: Path) -> "TrackingSettings":
    """A copied or moved run's tracking settings for resuming it in `folder`: its tracking places inside the
    original folder are taken to the same places inside this one, and those outside it (--track-dir, a
    --tracking-uri store, the sweep's or folds' folder) are left to the original: the copy is tracked afresh inside
    itself."""
    was = moved_from(folder)
    if was is None:
        return config
    changes: dict = {"track_dir": None}
    if config.tracking_uri and (path := local_path(config.tracking_uri)) is not None:
        inside = was == path or was in path.parents
        changes["tracking_uri"] = ("sqlite:///" + str(folder.resolve() / path.relative_to(was))
                                   if inside and config.tracking_uri.startswith("sqlite:") else None)
    group = Path(config.track_group).resolve() if config.track_group else None
    if group is not None and group not in folder.resolve().parents:
        changes["track_group"] = None
    return dataclasses.replace(config, **changes)


def set_folder(config: "TrackingSettings") -> Path:
    """The folder the run belongs to: its sweep's or folds' folder, or the run folder itself."""
    return Path(config.track_group or config.out).expanduser().resolve()


def relative_name(config: "TrackingSettings") -> str:
    """The run's name within its set (POINT, fold-2, POINT/fold-2), or its folder's name."""
    run = Path(config.out).expanduser().resolve()
    if config.track_group:
        try:
            return run.relative_to(set_folder(config)).as_posix()
        except ValueError:
            pass
    return run.name


def set_tags(config: "TrackingSettings") -> dict[str, str]:
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


def event_folder(config: "TrackingSettings") -> Path:
    """TensorBoard's folder: the run folder, or with --track-dir DIR/RUN (DIR/SWEEP/POINT for a sweep's run)."""
    if not config.track_dir:
        return Path(config.out).expanduser().resolve()
    name = relative_name(config)
    if config.track_group:
        name = f"{set_folder(config).name}/{name}"
    return Path(config.track_dir).expanduser().resolve() / name


def tracking_uri(config: "TrackingSettings") -> str:
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
