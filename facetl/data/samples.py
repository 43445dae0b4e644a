"""The labelled file list every other part works from, and how to get one from `--data`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.errors import FacetlError


@dataclass
class Samples:
    root: Path                 # paths are relative to this folder
    paths: list[str]
    labels: np.ndarray         # int64 index into class_names
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def files(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    def take(self, index) -> "Samples":
        index = np.asarray(index, dtype=np.int64)
        return Samples(self.root, [self.paths[i] for i in index], self.labels[index], self.class_names)

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def load_samples(data: str, images: str | None = None, target: str | None = None,
                 positive: str | None = None) -> Samples:
    """Read a class-folder tree or an attribute table into Samples with the positive class last."""
    from facetl.data.folders import read_class_folders
    from facetl.data.tables import read_attribute_table

    path = Path(data).expanduser()
    if not path.exists():
        raise FacetlError(f"data not found: {path}")
    if path.is_dir():
        if target:
            raise FacetlError("--target is for attribute tables; the data is a folder of class folders")
        samples = read_class_folders(path)
    else:
        if not target:
            raise FacetlError(f"{path} is a table: name the attribute to learn with --target (e.g. Smiling)")
        samples = read_attribute_table(path, target, Path(images).expanduser() if images else None)
    return _put_positive_last(samples, positive)


def _put_positive_last(samples: Samples, positive: str | None) -> Samples:
    if positive is None:
        return samples
    names = samples.class_names
    if positive not in names:
        raise FacetlError(f"--positive {positive!r} is not a class; classes are: {', '.join(names)}")
    if len(names) != 2:
        raise FacetlError("--positive applies to two-class data only")
    if names[1] == positive:
        return samples
    return Samples(samples.root, samples.paths, 1 - samples.labels, [names[1], names[0]])


def stratified_limit(samples: Samples, limit: int | None, seed: int) -> Samples:
    """A class-balanced-as-the-whole random subset, for quick runs and tests."""
    if limit is None or limit >= len(samples):
        return samples
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(samples)), train_size=limit, random_state=seed,
                               stratify=samples.labels if min(samples.counts().values()) >= 2 else None)
    return samples.take(np.sort(keep))


def data_root(config) -> Path:
    """The folder split.csv paths are relative to: the class-folder root, or a table's image folder."""
    path = Path(config.data).expanduser()
    if path.is_dir():
        return path
    return Path(config.images).expanduser() if config.images else path.parent
