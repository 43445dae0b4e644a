"""Class-per-folder datasets: each immediate subfolder is a class, images are found recursively."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facetl.data.samples import Samples
from facetl.errors import FacetlError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(f))
    return found


def read_class_folders(root: Path) -> Samples:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise FacetlError(f"{root} has {len(classes)} class folder(s); a folder dataset needs at least two "
                          "subfolders, one per class")
    paths, labels = [], []
    for index, name in enumerate(classes):
        images = find_images(root / name)
        if not images:
            raise FacetlError(f"class folder {root / name} contains no images")
        paths.extend(str(p.relative_to(root)) for p in images)
        labels.extend([index] * len(images))
    return Samples(root, paths, np.asarray(labels, dtype=np.int64), classes)
