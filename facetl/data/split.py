"""Seeded stratified train/val/test split that keeps identical files together, saved as split.csv.

Files with the same bytes form one group and land in one split: a duplicate on both sides of the
train/test line would inflate test accuracy.
"""
from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from facetl.data.samples import Samples
from facetl.errors import FacetlError
from facetl.runfolder import atomic_write_csv

SPLITS = ("train", "val", "test")


def duplicate_groups(samples: Samples, hashes: list[str]) -> list[list[int]]:
    """Indices of files sharing identical bytes, one list per group of two or more."""
    by_hash = defaultdict(list)
    for i, digest in enumerate(hashes):
        if digest:
            by_hash[digest].append(i)
    return [members for members in by_hash.values() if len(members) > 1]


def conflicting_groups(samples: Samples, hashes: list[str]) -> list[list[int]]:
    return [g for g in duplicate_groups(samples, hashes) if len(set(samples.labels[g].tolist())) > 1]


def apply_duplicate_policy(samples: Samples, hashes: list[str], policy: str) -> tuple[np.ndarray, str]:
    """Return a keep-mask and one line describing what was done with conflicting duplicates."""
    conflicts = conflicting_groups(samples, hashes)
    keep = np.ones(len(samples), dtype=bool)
    if not conflicts:
        return keep, ""
    files = sum(len(g) for g in conflicts)
    example = " = ".join(samples.paths[i] for i in conflicts[0][:2])
    if policy == "error":
        raise FacetlError(f"{len(conflicts)} identical images are filed under different labels "
                          f"(e.g. {example}); fix the data or pass --duplicates drop|keep")
    if policy == "drop":
        for group in conflicts:
            keep[group] = False
        return keep, (f"duplicates: dropped {files} files in {len(conflicts)} groups of identical images "
                      f"with conflicting labels (e.g. {example}) [--duplicates drop]")
    return keep, (f"duplicates: kept {files} files in {len(conflicts)} groups of identical images with "
                  f"conflicting labels (e.g. {example}) [--duplicates keep]")


def make_split(samples: Samples, hashes: list[str], fractions: list[float], seed: int) -> np.ndarray:
    """Assign each sample 'train', 'val' or 'test', stratified by label, identical files together."""
    group_of: dict[str, int] = {}
    groups: list[list[int]] = []
    for i in range(len(samples)):
        key = hashes[i] or f"#{i}"
        if key not in group_of:
            group_of[key] = len(groups)
            groups.append([])
        groups[group_of[key]].append(i)
    group_labels = np.array([samples.labels[g[0]] for g in groups])
    index = np.arange(len(groups))
    train_f, val_f, test_f = fractions

    def cut(ids, fraction_kept):
        labels = group_labels[ids]
        stratify = labels if np.bincount(labels).max() > 1 and _can_stratify(labels) else None
        try:
            return train_test_split(ids, train_size=fraction_kept, random_state=seed, stratify=stratify)
        except ValueError:
            pass
        try:
            return train_test_split(ids, train_size=fraction_kept, random_state=seed)
        except ValueError:  # too few groups for every split to get one
            raise FacetlError(f"too few images to split: {len(samples)} image(s) in {len(groups)} group(s) of "
                              f"distinct files cannot fill train, validation and test ({fractions})") from None

    if test_f > 0:
        rest, test = cut(index, train_f + val_f)
    else:
        rest, test = index, np.array([], dtype=np.int64)
    train, val = cut(rest, train_f / (train_f + val_f))
    assignment = np.empty(len(samples), dtype=object)
    for name, ids in (("train", train), ("val", val), ("test", test)):
        for g in ids:
            assignment[groups[g]] = name
    return assignment


def _can_stratify(labels: np.ndarray) -> bool:
    counts = np.bincount(labels)
    return counts[counts > 0].min() >= 2


def split_hash(samples: Samples) -> str:
    """A fingerprint of the file list and labels the split was made from."""
    digest = hashlib.sha256()
    for path, label in zip(samples.paths, samples.labels):
        digest.update(f"{path}\0{samples.class_names[label]}\n".encode())
    return digest.hexdigest()[:16]


def save_split(path: Path, samples: Samples, assignment: np.ndarray) -> None:
    rows = [(p, samples.class_names[l], s) for p, l, s in zip(samples.paths, samples.labels, assignment)]
    atomic_write_csv(path, ["path", "label", "split"], rows)


def load_split(path: Path, root: Path, class_names: list[str]) -> tuple[Samples, np.ndarray]:
    if not path.is_file():
        raise FacetlError(f"split file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    unknown = {r["label"] for r in rows} - set(class_names)
    if unknown:
        raise FacetlError(f"{path} names classes not in the run: {', '.join(sorted(unknown))}")
    index = {name: i for i, name in enumerate(class_names)}
    samples = Samples(root, [r["path"] for r in rows], np.array([index[r["label"]] for r in rows]),
                      class_names)
    return samples, np.array([r["split"] for r in rows], dtype=object)
