"""The labelled file list every other part works from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Samples:
    root: Path                 # paths are relative to this folder
    paths: list[str]
    labels: np.ndarray         # int64 index into class_names; multi-attribute: (N, K) int8 1/0, -1 missing
    class_names: list[str]     # multi-attribute: the attribute names
    groups: list[str] | None = None  # per file: who or what it shows (--split-by); a group never spans splits

    def __len__(self) -> int:
        return len(self.paths)

    def files(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    def take(self, index) -> "Samples":
        index = np.asarray(index, dtype=np.int64)
        groups = None if self.groups is None else [self.groups[i] for i in index]
        return Samples(self.root, [self.paths[i] for i in index], self.labels[index], self.class_names, groups)

    @property
    def multi_attribute(self) -> bool:
        return self.labels.ndim == 2

    def counts(self) -> dict[str, int]:
        """Images per class; multi-attribute: images per attribute that have it (value 1)."""
        if self.multi_attribute:
            return {name: int(n) for name, n in zip(self.class_names, (self.labels == 1).sum(0))}
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def stratified_limit(samples: Samples, limit: int | None, seed: int) -> Samples:
    """A class-balanced-as-the-whole random subset, for quick runs and tests. Images are drawn, not groups:
    with --split-by every group keeps about its share of images, and the split then keeps groups whole."""
    if limit is None or limit >= len(samples):
        return samples
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(samples)), train_size=limit, random_state=seed,
                               stratify=strata(samples) if np.bincount(strata(samples)).min() >= 2 else None)
    return samples.take(np.sort(keep))


def strata(samples: Samples, smallest: int = 10) -> np.ndarray:
    """One int per file for stratified splitting: its label; for a multi-attribute run, its joint label over the
    attributes that keep every combination at least `smallest` files strong.

    Attributes join rarest first (fewest of its less common value), since the rarest are the likeliest to leave a
    split without a positive; one that would make a combination smaller than `smallest` is skipped. A missing
    value is a value of its own. With two or three attributes this is usually the full joint label; with 40 it
    stratifies on the rare attributes, which is what keeps each attribute's base rate alike in every split.
    (Iterative stratification, Sechidis et al. 2011, balances all attributes at once, but the packages that
    implement it, scikit-multilearn and iterative-stratification, have had no release in years.)"""
    if not samples.multi_attribute:
        return np.asarray(samples.labels, dtype=np.int64)
    labels = samples.labels.astype(np.int64) + 1           # -1/0/1 -> 0/1/2
    minority = [min((labels[:, k] == 1).sum(), (labels[:, k] == 2).sum()) for k in range(labels.shape[1])]
    key = np.zeros(len(samples), dtype=np.int64)
    for k in np.argsort(minority, kind="stable"):
        joined = np.unique(key * 3 + labels[:, k], return_inverse=True)[1]
        if np.bincount(joined).min() >= smallest:
            key = joined
    return key
