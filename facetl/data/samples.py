"""The labelled file list every other part works from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Samples:
    root: Path                 # paths are relative to this folder
    paths: list[str]
    labels: np.ndarray         # int64 index into class_names
    class_names: list[str]
    groups: list[str] | None = None  # per file: who or what it shows (--split-by); a group never spans splits

    def __len__(self) -> int:
        return len(self.paths)

    def files(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    def take(self, index) -> "Samples":
        index = np.asarray(index, dtype=np.int64)
        groups = None if self.groups is None else [self.groups[i] for i in index]
        return Samples(self.root, [self.paths[i] for i in index], self.labels[index], self.class_names, groups)

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def stratified_limit(samples: Samples, limit: int | None, seed: int) -> Samples:
    """A class-balanced-as-the-whole random subset, for quick runs and tests. Images are drawn, not groups:
    with --split-by every group keeps about its share of images, and the split then keeps groups whole."""
    if limit is None or limit >= len(samples):
        return samples
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(samples)), train_size=limit, random_state=seed,
                               stratify=samples.labels if min(samples.counts().values()) >= 2 else None)
    return samples.take(np.sort(keep))
