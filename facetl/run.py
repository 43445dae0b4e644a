"""Reopening a finished run: its config, its record and its model, from nothing but the run folder.

Everything that uses a trained run (evaluate, predict, and later serving, export and explanations)
starts here, and takes the preprocessing from the run's record, so every image is prepared as the
training images were. The machine side (device, precision) is chosen by the caller for its own machine.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetl.config import TrainConfig, build_config
from facetl.data.augment import BatchAugment, to_float
from facetl.data.features import FrozenPart, ImageSource
from facetl.errors import FacetlError
from facetl.models import FaceClassifier, rebuild_model
from facetl.record import RunRecord
from facetl.runfolder import read_torch_file
from facetl.runtime import Runtime
from facetl.train.loop import probabilities


@dataclass
class LoadedRun:
    folder: Path
    config: TrainConfig
    record: RunRecord
    model: FaceClassifier
    history: list[dict]

    @property
    def class_names(self) -> list[str]:
        return self.record.class_names

    def image_source(self, images: np.ndarray | None, runtime: Runtime) -> ImageSource:
        """Batches of store rows -> the trainable part's input, split where training split the model."""
        self.model.to(runtime.device)
        return ImageSource(images, FrozenPart(self.model, self.record.cut), self.record.preprocessing,
                           BatchAugment([]), runtime)

    @torch.inference_mode()
    def classify(self, images: np.ndarray, runtime: Runtime) -> np.ndarray:
        """(B, size, size, 3) uint8 images, prepared by the record's preprocessing -> (B, classes) probabilities,
        with the run's temperature (1.0 unless it was calibrated)."""
        source = self.image_source(None, runtime)
        z = source.prepare(to_float(images, runtime.device))
        with runtime.precision.autocast():
            logits = self.model.forward_suffix(z, self.record.cut).float()
            return probabilities(logits, self.record.temperature, self.record.multi_attribute).cpu().numpy()


def load_run(folder: str | Path, device: torch.device | None = None) -> LoadedRun:
    """Rebuild the model of a run from its best checkpoint."""
    folder = Path(folder)
    path = folder / "best.pt"
    if not path.is_file():
        raise FacetlError(f"{folder} is not a finished facetl run (no best.pt)")
    checkpoint = read_torch_file(path, "checkpoint ")
    if not isinstance(checkpoint, dict) or not {"model", "config", "record"} <= set(checkpoint):
        raise FacetlError(f"{path} is not a facetl checkpoint of this version (no run record); retrain the run")
    config = build_config(checkpoint["config"])
    try:
        record = RunRecord.from_dict(checkpoint["record"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FacetlError(f"{path} has a damaged run record ({exc})") from None
    model, _ = rebuild_model(config, record)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise FacetlError(f"{path}: its weights do not fit the model its config describes "
                          f"({str(exc).splitlines()[0][:160]})") from None
    model.to(device or torch.device("cpu")).eval()
    return LoadedRun(folder, config, record, model, read_history(folder) or list(checkpoint.get("history", [])))


def read_history(folder: Path) -> list[dict]:
    """Every finished epoch from history.csv (best.pt's own history stops at the best epoch)."""
    path = folder / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _history_value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _history_value(column: str, text: str):
    if column == "epoch":
        return int(text)
    if column == "strategy" or text == "":
        return text or None
    return float(text)


def locate_data(config: TrainConfig, folder: Path, data: str | None = None, images: str | None = None) -> TrainConfig:
    """The run's config with data paths that exist here: as recorded, or relative to the run folder when the
    run moved with its data, or as given (--data, --images). A message names every path it tried."""
    relative = {}
    if (folder / "data_paths.json").is_file():
        relative = json.loads((folder / "data_paths.json").read_text())
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
