"""Label new photos with a trained run: `facetl predict RUN IMAGE_OR_FOLDER...`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from facetl.data.augment import BatchAugment
from facetl.data.folders import find_images
from facetl.data.images import UnreadableImage, decode_image
from facetl.errors import FacetlError
from facetl.evaluate.run import load_run
from facetl.train.loop import probabilities
from facetl.train.sources import ImageSource, Precision


def collect_images(inputs: list[str]) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise FacetlError(f"no images found in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FacetlError(f"image or folder not found: {path}")
    return files


def predict(run_folder: str, inputs: list[str], batch_size: int = 64) -> tuple[list[tuple[str, str, float]], list]:
    """Return ([(path, label, probability of that label)], [(path, why unreadable)])."""
    run = load_run(run_folder)
    size = run.run_info["img_size"]
    device = torch.device("cpu")
    source = ImageSource(None, run.model, run.run_info["cut"], run.run_info["mean"], run.run_info["std"],
                         BatchAugment([]), device, Precision(run.config.precision, device))
    rows, skipped = [], []
    files = collect_images(inputs)
    for start in range(0, len(files), batch_size):
        batch_files, arrays = [], []
        for f in files[start:start + batch_size]:
            try:
                arrays.append(decode_image(f, size)[0])
                batch_files.append(f)
            except UnreadableImage as exc:
                skipped.append((str(f), str(exc)))
        if not arrays:
            continue
        source.images = np.stack(arrays)
        z = source.batch(np.arange(len(arrays)), None)  # the frozen part, as during training
        with torch.inference_mode(), source.precision.autocast():
            probs = probabilities(run.model.forward_suffix(z, source.cut).float()).numpy()
        for f, p in zip(batch_files, probs):
            k = int(p.argmax())
            rows.append((str(f), run.class_names[k], float(p[k])))
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    return rows, skipped
