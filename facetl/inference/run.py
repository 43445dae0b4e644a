"""Reopening a finished run: its config, its record and its model, from nothing but the run folder.

Everything that uses a trained run (evaluate, predict, and later serving, export and explanations)
starts here, and takes the preprocessing from the run's record, so every image is prepared as the
training images were. The machine side (device, precision) is chosen by the caller for its own machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetl.config import TrainConfig, build_config
from facetl.data.augment import BatchAugment, to_float
from facetl.data.features import FrozenPart, ImageSource
from facetl.errors import FacetlError, NotANumber
from facetl.models import FaceClassifier, rebuild_model
from facetl.models.outputs import probabilities
from facetl.record import RunRecord
from facetl.runfolder import checkpoint_weights, read_torch_file
from facetl.runreader import read_history
from facetl.runtime import Runtime


@dataclass
class LoadedRun:
    folder: Path
    config: TrainConfig
    record: RunRecord
    model: FaceClassifier
    saved_history: list[dict]     # best.pt's own, up to the best epoch

    @property
    def class_names(self) -> list[str]:
        return self.record.class_names

    @property
    def history(self) -> list[dict]:
        """Every finished epoch, read when asked for: predict and export do not need it, so a damaged
        history.csv stops only what uses it (a report), with one line naming the file."""
        return read_history(self.folder) or self.saved_history

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
            probs = probabilities(logits, self.record.temperature, self.record.multi_attribute).cpu().numpy()
        if not np.isfinite(probs).all():  # finite weights can still overflow: never hand out a NaN as an answer
            raise NotANumber(f"{self.folder / 'best.pt'}: the model's output is not a number (NaN or inf) for "
                              "these images; the run's weights cannot be used")
        return probs


def load_run(folder: str | Path, device: torch.device | None = None) -> LoadedRun:
    """Rebuild the model of a run from its best checkpoint."""
    folder = Path(folder)
    path = folder / "best.pt"
    if not path.is_file():
        raise FacetlError(f"{folder} is not a finished facetl run (no best.pt)")
    checkpoint = read_torch_file(path, "checkpoint ")
    if not isinstance(checkpoint, dict) or not {"model", "config", "record"} <= set(checkpoint):
        raise FacetlError(f"{path} is not a facetl checkpoint of this version (no run record); retrain the run")
    if not isinstance(checkpoint["config"], dict):
        raise FacetlError(f"{path}: its config is a {type(checkpoint['config']).__name__}, not a mapping")
    try:
        config = build_config(checkpoint["config"])
    except FacetlError as exc:
        raise FacetlError(f"{path}: its {exc}") from None
    record = RunRecord.read(checkpoint["record"], path)
    state = checkpoint_weights(checkpoint["model"], path)
    model, _ = rebuild_model(config, record)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FacetlError(f"{path}: its weights do not fit the model its config describes "
                          f"({str(exc).splitlines()[0][:160]})") from None
    model.to(device or torch.device("cpu")).eval()
    history = checkpoint.get("history", [])
    return LoadedRun(folder, config, record, model, list(history) if isinstance(history, list) else [])
