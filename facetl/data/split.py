"""Seeded stratified train/val/test split that keeps identical files together, saved as split.csv.

Files with the same bytes form one group and land in one split: a duplicate on both sides of the
train/test line would inflate test accuracy. With --split-by, files of one group (one person) also stay in
one split, for the same reason: a face seen in training makes its test photos easy.

Without groups the split cuts the list of distinct files with `train_test_split`, stratified by label, so
the fractions hold in image counts. With groups it uses scikit-learn's `StratifiedGroupKFold`:
`GroupShuffleSplit` keeps groups whole but ignores labels, so a test split of three people could be all
men. StratifiedGroupKFold balances labels and image counts across its folds; one fold of round(1/test)
becomes the test split and one fold of round((train+val)/val) of the rest the validation split, so the
fractions hold approximately, in image counts (1/10 and 1/9 for 80/10/10). `make_folds` gives the K
train/val/test splits of cross-validation the same way.
"""
from __future__ import annotations

import csv
import hashlib
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from facetl.data.samples import Samples, strata
from facetl.errors import FacetlError
from facetl.runfolder import atomic_write_csv, plain_cell

SPLITS = ("train", "val", "test")


def duplicate_groups(samples: Samples, hashes: list[str]) -> list[list[int]]:
    """Indices of files sharing identical bytes, one list per group of two or more."""
    by_hash = defaultdict(list)
    for i, digest in enumerate(hashes):
        if digest:
            by_hash[digest].append(i)
    return [members for members in by_hash.values() if len(members) > 1]


def conflicting_groups(samples: Samples, hashes: list[str]) -> list[list[int]]:
    return [g for g in duplicate_groups(samples, hashes) if len({label_text(samples, i) for i in g}) > 1]


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
    """Assign each sample 'train', 'val' or 'test', stratified by label, identical files together, and
    with `samples.groups` every group in one split."""
    if samples.groups is not None:
        return _grouped_split(samples, hashes, fractions, seed)
    groups, group_labels = _identical_files(samples, hashes)
    index = np.arange(len(groups))
    train_f, val_f, test_f = fractions

    def cut(ids, fraction_kept):
        return _cut(ids, group_labels[ids], fraction_kept, seed,
                    f"too few images to split: {len(samples)} image(s) in {len(groups)} group(s) of distinct "
                    f"files cannot fill train, validation and test ({fractions})")

    if test_f > 0:
        rest, test = cut(index, train_f + val_f)
    else:
        rest, test = index, np.array([], dtype=np.int64)
    train, val = cut(rest, train_f / (train_f + val_f))
    return _expand(len(samples), groups, train, val, test)


def _identical_files(samples: Samples, hashes: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Sample indices per distinct file (same bytes: one entry), and each entry's label."""
    group_of: dict[str, int] = {}
    groups: list[list[int]] = []
    for i in range(len(samples)):
        key = hashes[i] or f"#{i}"
        if key not in group_of:
            group_of[key] = len(groups)
            groups.append([])
        groups[group_of[key]].append(i)
    labels = strata(samples)
    return groups, np.array([labels[g[0]] for g in groups], dtype=np.int64)


def _cut(ids: np.ndarray, labels: np.ndarray, fraction_kept: float, seed: int, too_few: str):
    stratify = labels if len(labels) and np.bincount(labels).max() > 1 and _can_stratify(labels) else None
    try:
        return train_test_split(ids, train_size=fraction_kept, random_state=seed, stratify=stratify)
    except ValueError:
        pass
    try:
        return train_test_split(ids, train_size=fraction_kept, random_state=seed)
    except ValueError:  # too few groups for every split to get one
        raise FacetlError(too_few) from None


def _expand(n: int, groups: list[list[int]], train, val, test) -> np.ndarray:
    assignment = np.empty(n, dtype=object)
    for name, ids in (("train", train), ("val", val), ("test", test)):
        for g in ids:
            assignment[groups[g]] = name
    return assignment


def group_ids(samples: Samples, hashes: list[str]) -> np.ndarray:
    """One id per sample: files of one group (--split-by) or with identical bytes share it (a copy of a
    photo filed under two people joins the two people)."""
    parent = list(range(len(samples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i in range(len(samples)):
        keys = ([("file", hashes[i])] if hashes[i] else []) + \
            ([("group", samples.groups[i])] if samples.groups is not None else [])
        for key in keys:
            j = first.setdefault(key, i)
            parent[root(i)] = root(j)
    return np.unique([root(i) for i in range(len(samples))], return_inverse=True)[1]


def _grouped_split(samples: Samples, hashes: list[str], fractions: list[float], seed: int) -> np.ndarray:
    ids = group_ids(samples, hashes)
    train_f, val_f, test_f = fractions
    needed = 3 if test_f > 0 else 2
    if len(np.unique(ids)) < needed:
        raise FacetlError(f"too few groups to split: {len(np.unique(ids))} group(s) cannot fill train, validation"
                          f"{' and test' if test_f > 0 else ''} with every group wholly in one split")
    index, labels = np.arange(len(samples)), strata(samples)
    if test_f > 0:
        rest, test = _group_cut(index, labels, ids, test_f, seed)
    else:
        rest, test = index, np.array([], dtype=np.int64)
    train, val = _group_cut(rest, labels, ids, val_f / (train_f + val_f), seed)
    assignment = np.empty(len(samples), dtype=object)
    assignment[train], assignment[val], assignment[test] = "train", "val", "test"
    return assignment


def _group_cut(index: np.ndarray, labels: np.ndarray, ids: np.ndarray, fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): part is one fold of round(1/fraction) stratified group folds of `index`, the first
    that has every class when one has (with few groups a fold can hold a single person)."""
    n_groups = len(np.unique(ids[index]))
    folds = min(max(2, round(1 / fraction)), n_groups)
    if n_groups < 2:
        raise FacetlError(f"too few groups to split: {n_groups} group(s) left for train and validation")
    pairs = _group_folds(labels[index], ids[index], folds, seed)
    classes = len(np.unique(labels[index]))
    rest, part = next((p for p in pairs if len(np.unique(labels[index][p[1]])) == classes), pairs[0])
    return index[rest], index[part]


def _group_folds(labels: np.ndarray, ids: np.ndarray, k: int, seed: int):
    """StratifiedGroupKFold's (rest, fold) pairs; a single-class input stratifies trivially."""
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    placeholder = np.zeros(len(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class ... fewer than n_splits"
        try:
            return list(splitter.split(placeholder, labels, ids))
        except ValueError:  # every class has fewer images than folds: stratification is meaningless
            return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                        .split(placeholder, np.zeros(len(labels), dtype=np.int64), ids))


def make_folds(samples: Samples, hashes: list[str], k: int, val_fraction: float, seed: int) -> list[np.ndarray]:
    """K cross-validation splits: fold i is the test split of the i-th, and validation is carved from the
    rest with `val_fraction` (of train+val). Identical files, and each group of `samples.groups`, stay whole;
    without groups the folds are StratifiedKFold over distinct files."""
    if samples.groups is not None:
        ids = group_ids(samples, hashes)
        n_groups = len(np.unique(ids))
        if n_groups < k + 1:
            raise FacetlError(f"too few groups for {k} folds: {n_groups} group(s); every fold needs a group to test "
                              f"and the rest at least two (train and validation); use fewer --folds")
        index = np.arange(len(samples))
        assignments = []
        for rest, test in _group_folds(samples.labels, ids, k, seed):
            train, val = _group_cut(index[rest], samples.labels, ids, val_fraction, seed)
            assignment = np.empty(len(samples), dtype=object)
            assignment[train], assignment[val], assignment[test] = "train", "val", "test"
            assignments.append(assignment)
        return assignments
    groups, group_labels = _identical_files(samples, hashes)
    if len(groups) < k + 1:
        raise FacetlError(f"too few images for {k} folds: {len(groups)} distinct file(s); use fewer --folds")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer files than folds: as even as can be
        try:
            parts = list(splitter.split(np.zeros(len(groups)), group_labels))
        except ValueError:  # every class has fewer files than folds
            parts = list(splitter.split(np.zeros(len(groups)), np.zeros(len(groups), dtype=np.int64)))
    assignments = []
    for rest, test in parts:
        train, val = _cut(rest, group_labels[rest], 1 - val_fraction, seed,
                          f"too few images to carve a validation split from {len(rest)} distinct file(s)")
        assignments.append(_expand(len(samples), groups, train, val, test))
    return assignments


def group_counts(samples: Samples, assignment: np.ndarray) -> str:
    """'train 18 groups, val 3, test 3': distinct --split-by values per split."""
    counts = [len({g for g, a in zip(samples.groups, assignment) if a == name}) for name in SPLITS]
    return f"train {counts[0]} groups, val {counts[1]}, test {counts[2]}"


def _can_stratify(labels: np.ndarray) -> bool:
    counts = np.bincount(labels)
    return counts[counts > 0].min() >= 2


def split_hash(samples: Samples) -> str:
    """A fingerprint of the file list and labels the split was made from."""
    digest = hashlib.sha256()
    for i, path in enumerate(samples.paths):
        digest.update(f"{path}\0{label_text(samples, i)}\n".encode())
    return digest.hexdigest()[:16]


def save_split(path: Path, samples: Samples, assignment: np.ndarray) -> None:
    """path,label,split per file, then group when the split was by group (older readers ignore it)."""
    rows = [(p, label_text(samples, i), s) for i, (p, s) in enumerate(zip(samples.paths, assignment))]
    if samples.groups is None:
        atomic_write_csv(path, ["path", "label", "split"], rows)
    else:
        atomic_write_csv(path, ["path", "label", "split", "group"],
                         [row + (g,) for row, g in zip(rows, samples.groups)])


def label_text(samples: Samples, i: int) -> str:
    """File i's label as split.csv writes it: the class name; multi-attribute, one character per attribute in
    class order, 1, 0 or - for a missing value (10- : the first attribute, not the second, the third unknown)."""
    if samples.multi_attribute:
        return "".join("-" if v < 0 else str(int(v)) for v in samples.labels[i])
    return samples.class_names[samples.labels[i]]


def load_split(path: Path, root: Path, class_names: list[str], multi_attribute: bool = False
               ) -> tuple[Samples, np.ndarray]:
    if not path.is_file():
        raise FacetlError(f"split file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{k: plain_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in csv.DictReader(f)]
    if multi_attribute:
        return _load_attribute_split(path, root, class_names, rows)
    unknown = {r["label"] for r in rows} - set(class_names)
    if unknown:
        raise FacetlError(f"{path} names classes not in the run: {', '.join(sorted(unknown))}")
    index = {name: i for i, name in enumerate(class_names)}
    groups = [r.get("group") or "" for r in rows] if rows and "group" in rows[0] else None
    samples = Samples(root, [r["path"] for r in rows], np.array([index[r["label"]] for r in rows], dtype=np.int64),
                      class_names, groups)
    return samples, np.array([r["split"] for r in rows], dtype=object)


def _load_attribute_split(path: Path, root: Path, names: list[str], rows: list[dict]) -> tuple[Samples, np.ndarray]:
    value = {"1": 1, "0": 0, "-": -1}
    bad = next((r["label"] for r in rows if len(r["label"]) != len(names) or set(r["label"]) - set(value)), None)
    if bad is not None:
        raise FacetlError(f"{path} has the label {bad!r}, not one of 1/0/- per attribute of the run ({len(names)})")
    labels = np.array([[value[c] for c in r["label"]] for r in rows], dtype=np.int8).reshape(len(rows), len(names))
    groups = [r.get("group") or "" for r in rows] if rows and "group" in rows[0] else None
    return Samples(root, [r["path"] for r in rows], labels, names, groups), \
        np.array([r["split"] for r in rows], dtype=object)
