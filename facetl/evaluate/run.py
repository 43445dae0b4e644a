"""Reopen a finished run folder: its model from best.pt, its data from split.csv; evaluate a split."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from facetl.config import build_config
from facetl.data.prepare import check_unchanged
from facetl.data.samples import data_root
from facetl.data.split import load_split
from facetl.data.store import default_cache_dir, open_image_store
from facetl.errors import FacetlError
from facetl.evaluate.report import write_evaluation
from facetl.models import build_model
from facetl.runfolder import read_torch_file


@dataclasses.dataclass
class LoadedRun:
    folder: Path
    config: object
    model: torch.nn.Module
    run_info: dict
    history: list[dict]

    @property
    def class_names(self) -> list[str]:
        return self.run_info["class_names"]


def load_run(folder: str | Path, device: torch.device | None = None) -> LoadedRun:
    """Rebuild the model of a run from nothing but its folder."""
    folder = Path(folder)
    path = folder / "best.pt"
    if not path.is_file():
        raise FacetlError(f"{folder} is not a finished facetl run (no best.pt)")
    checkpoint = read_torch_file(path)
    config = build_config(checkpoint["config"])
    run_info = checkpoint["run_info"]
    structure = dataclasses.replace(config, weights="none", img_size=run_info["img_size"])
    model, _, _ = build_model(structure, len(run_info["class_names"]), log=lambda _: None)
    model.load_state_dict(checkpoint["model"])
    model.weights_note = run_info["weights_note"]
    model.to(device or torch.device("cpu")).eval()
    return LoadedRun(folder, config, model, run_info, checkpoint["history"])


def evaluate_run(folder: str | Path, split: str = "test", progress: bool = True,
                 allow_changed_data: bool = False) -> tuple[dict, Path]:
    """Evaluate the best checkpoint on `split`; test results go in the run folder, others in eval-SPLIT/."""
    from facetl.train.fit import resolve_device
    from facetl.train.loop import evaluate
    from facetl.train.sources import ImageSource, Precision
    from facetl.data.augment import BatchAugment

    run = load_run(folder)
    config = run.config
    device = resolve_device(config.device)
    run.model.to(device)
    samples, assignment = load_split(run.folder / "split.csv", data_root(config), run.class_names)
    check_unchanged(samples, run.folder / "split.csv", allow_changed_data)
    index = np.flatnonzero(assignment == split)
    if len(index) == 0:
        raise FacetlError(f"the {split} split of {run.folder} is empty")
    files = [samples.files()[i] for i in index]
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    store = open_image_store(files, run.run_info["img_size"], cache if config.cache else None, config.workers,
                             progress)
    if store.errors:
        first = next(iter(store.errors))
        raise FacetlError(f"{files[first]} is unreadable: {store.errors[first]}")
    # the same split of the model, and the same precision on each side of it, as during training
    precision = Precision(config.precision, device)
    cut = run.run_info["cut"]
    source = ImageSource(store.images, run.model, cut, run.run_info["mean"], run.run_info["std"], BatchAugment([]),
                         device, precision)
    labels = samples.labels[index]
    positions = np.arange(len(index))
    result = evaluate(run.model, source, labels, positions, precision, cut, config.batch_size * 2, split, progress)
    out = run.folder if split == "test" else run.folder / f"eval-{split}"
    metrics = write_evaluation(out, split, labels, result["probs"], store.images, run.class_names, run.history,
                               run.run_info, config.to_dict())
    return metrics, out
