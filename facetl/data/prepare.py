"""From a DataSpec (data/spec.py) to data ready for training: decoded store, unreadable files set aside,
duplicates handled, split made (or reused from split.csv) and saved."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.data.faces import FACES_CSV_HEADER
from facetl.data.load import load_groups, load_samples
from facetl.data.samples import Samples, stratified_limit
from facetl.data.spec import DataSpec
from facetl.data.split import (apply_duplicate_policy, group_counts, load_split, make_split, save_split,
                                split_hash)
from facetl.data.store import ImageStore, cache_root, files_key, RowCut, open_image_store
from facetl.errors import FacetlError
from facetl.preprocessing import Preprocessing
from facetl.runfolder import atomic_write_csv, atomic_write_json


@dataclass
class PreparedData:
    samples: Samples              # every file of the store, in store order
    store: ImageStore
    assignment: np.ndarray        # per store index: 'train', 'val', 'test', or '' (left out)
    cache_dir: Path

    @property
    def labels(self) -> np.ndarray:
        return self.samples.labels

    @property
    def class_names(self) -> list[str]:
        return self.samples.class_names

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == split)


def read_samples(spec: DataSpec) -> Samples:
    """The labelled file list the spec names; --groups is checked here too, before any training."""
    samples = load_samples(spec.data, spec.images, spec.target, spec.positive, spec.split_by)
    if spec.groups:
        load_groups(spec.data, spec.images, spec.target, spec.groups)
    return samples


def cache_folder(spec: DataSpec) -> Path:
    """The run's cache folder; with --no-cache a private temporary one."""
    if not spec.cache:
        return Path(tempfile.mkdtemp(prefix="facetl-nocache-"))
    return cache_root(spec.cache_dir)


def open_store_together(files: list[Path], preprocessing: Preprocessing, store_dir: Path | None,
                        workers: int | None, progress: bool, group) -> ImageStore:
    """With several processes, the first on each machine decodes; the others then open its store."""
    def open_store(show: bool) -> ImageStore:
        return open_image_store(files, preprocessing.size, store_dir, workers, show, RowCut.of(preprocessing))

    if group is None or not group.active or store_dir is None:
        return open_store(progress)
    store = open_store(progress) if group.is_local_main else None
    group.barrier()
    return store or open_store(False)


def prepare_data(spec: DataSpec, samples: Samples, preprocessing: Preprocessing, folder: Path, log,
                 progress: bool = True, group=None) -> PreparedData:
    """Decode, clean and split `samples`; write split.csv (and skipped_images.csv) into the run folder.

    Every process computes the same split; only the main one (`group.is_main`) writes files.
    """
    writes = group is None or group.is_main
    cache_dir = cache_folder(spec)
    store_dir = cache_dir if spec.cache else None

    def open_store(files: list[Path]) -> ImageStore:
        return open_store_together(files, preprocessing, store_dir, spec.workers, progress, group)

    split_file = split_file_to_reuse(spec, folder)
    if split_file is not None:
        base, assignment, store = _reuse_split(spec, samples, split_file, folder, open_store, log, writes)
        return PreparedData(base, store, assignment, cache_dir)

    samples = stratified_limit(samples, spec.limit, spec.seed)
    kinds = "attributes, images with each" if samples.multi_attribute else "classes"
    log(f"data: {len(samples)} images, {len(samples.class_names)} {kinds} "
        f"({', '.join(f'{k} {v}' for k, v in samples.counts().items())})"[:400])
    store = open_store(samples.files())
    kept = _usable_images(spec, samples, store, folder, log, writes)
    assignment = np.full(len(samples), "", dtype=object)
    assignment[kept] = make_split(samples.take(kept), [store.hashes[i] for i in kept], list(spec.split), spec.seed)
    if writes:
        write_split(folder, samples.take(kept), assignment[kept], spec.seed, list(spec.split))
    log(f"split: {_counts(assignment)} (seed {spec.seed}), saved to {folder / 'split.csv'}")
    if samples.groups is not None:
        log(f"split by {spec.split_by}: {group_counts(samples.take(kept), assignment[kept])}")
    check_classes_per_split(samples, assignment, log)
    return PreparedData(samples, store, assignment, cache_dir)


def split_file_to_reuse(spec: DataSpec, folder: Path) -> Path | None:
    """The run folder's own split.csv (a resumed run), else --split-file, else none: a new split is made."""
    if (folder / "split.csv").is_file():
        return folder / "split.csv"
    return Path(spec.split_file) if spec.split_file else None


def _reuse_split(spec: DataSpec, samples: Samples, split_file: Path, folder: Path, open_store, log,
                 writes: bool) -> tuple[Samples, np.ndarray, ImageStore]:
    """The split `split_file` records, over a decoded store; copied into the run folder when it came from
    elsewhere. Its files must be unchanged and still readable."""
    split_samples, split_assignment = load_split(split_file, samples.root, samples.class_names,
                                                 samples.multi_attribute)
    check_unchanged(split_samples, split_file, remedy=(
        "resuming needs the data the run started with" if split_file.parent == folder else
        "leave out --split-file to make a new split of the data as it is now"))
    base, assignment = split_over_store_files(spec, samples, split_samples, split_assignment)
    store = open_store(base.files())
    broken = [i for i in np.flatnonzero(assignment != "") if i in store.errors]
    if broken:
        raise FacetlError(f"{base.files()[broken[0]]} has become unreadable since the split was made: "
                          f"{store.errors[broken[0]]}")
    log(f"split: reused {split_file} ({_counts(assignment)})")
    if split_samples.groups is not None:
        log(f"split by {spec.split_by or 'group'}: "
            f"{group_counts(split_samples, split_assignment)}")
    if split_file != folder / "split.csv" and writes:
        save_split(folder / "split.csv", split_samples, split_assignment)
        if split_file.with_suffix(".json").is_file():
            (folder / "split.json").write_bytes(split_file.with_suffix(".json").read_bytes())
    return base, assignment, store


def _usable_images(spec: DataSpec, samples: Samples, store: ImageStore, folder: Path, log,
                   writes: bool) -> np.ndarray:
    """Indices of the images a new split is made of: readable (with a face, when faces are used) and kept by
    the duplicate policy. faces.csv and skipped_images.csv say what was found and what was left out."""
    keep = store.readable()
    if store.faces is not None and writes:
        atomic_write_csv(folder / "faces.csv", FACES_CSV_HEADER, store.faces)
        log(f"faces: {int(keep.sum())} of {len(samples)} photos have a face used; every face found is listed in "
            f"{folder / 'faces.csv'}")
    if store.errors and writes:
        rows = [(samples.paths[i], store.errors[i]) for i in sorted(store.errors)]
        atomic_write_csv(folder / "skipped_images.csv", ["path", "reason"], rows)
        what = "image(s) that were unreadable or had no usable face" if store.faces is not None else \
            "unreadable image(s)"
        log(f"warning: skipped {len(rows)} {what}, listed in {folder / 'skipped_images.csv'}; "
            f"first: {rows[0][0]} ({rows[0][1]})")
    duplicate_keep, note = apply_duplicate_policy(samples, store.hashes, spec.duplicates)
    if note:
        log(note)
    kept = np.flatnonzero(keep & duplicate_keep)
    if not samples.multi_attribute and len(np.unique(samples.labels[kept])) < 2:
        raise FacetlError("fewer than two classes have readable images; nothing to learn")
    return kept


def write_split(folder: Path, samples: Samples, assignment: np.ndarray, seed: int, fractions: list[float],
                **extra) -> None:
    """split.csv, and split.json with what it was made from (check_unchanged compares files_key)."""
    save_split(folder / "split.csv", samples, assignment)
    atomic_write_json(folder / "split.json", {"files_hash": split_hash(samples),
                                              "files_key": files_key(samples.files(), root=samples.root),
                                              "seed": seed, "fractions": fractions, "counts": _counts(assignment),
                                              **extra})


def split_over_store_files(spec: DataSpec, samples: Samples, split: Samples, split_assignment: np.ndarray
                           ) -> tuple[Samples, np.ndarray]:
    """The file list the split was made from, with the split's assignment on it: its decoded store is the
    one the first run of a sweep made, so a sweep decodes the data once. Another list: the split's own."""
    base = stratified_limit(samples, spec.limit, spec.seed)
    index_of = {path: i for i, path in enumerate(base.paths)}
    rows = [index_of.get(path) for path in split.paths]
    if None in rows or not np.array_equal(base.labels[rows], split.labels):
        base, rows = split, list(range(len(split)))
    assignment = np.full(len(base), "", dtype=object)
    assignment[rows] = split_assignment
    return base, assignment


def check_unchanged(samples: Samples, split_file: Path, allow_changed: bool = False,
                    remedy: str = "pass --allow-changed-data to use it anyway") -> None:
    """Refuse data whose files changed (gone, or different size or time) since the split was made; `remedy`
    ends the message with what the user can do about it in the command at hand."""
    missing = [p for p in samples.files() if not p.is_file()]
    if missing:
        raise FacetlError(f"the data changed since {split_file} was made: {missing[0]} is gone"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    meta = split_file.with_suffix(".json")
    if allow_changed or not meta.is_file():
        return
    import json

    recorded = json.loads(meta.read_text()).get("files_key")
    if recorded and recorded != files_key(samples.files(), root=samples.root):
        raise FacetlError(f"the data changed since {split_file} was made (a file's size or modification time "
                          f"differs); {remedy}")


def check_classes_per_split(samples: Samples, assignment: np.ndarray, log) -> None:
    """Images per class in each split, in the log. A class with no training image cannot be learnt: an
    error. One missing from validation or test leaves its metrics undefined: a warning."""
    if samples.multi_attribute:
        return check_attributes_per_split(samples, assignment, log)
    for split in ("train", "val", "test"):
        counts = np.bincount(samples.labels[assignment == split], minlength=len(samples.class_names))
        if split == "train" or len(samples.class_names) <= 6:
            log(f"  {split}: " + ", ".join(f"{n} {c}" for n, c in zip(samples.class_names, counts))[:400])
        missing = [n for n, c in zip(samples.class_names, counts) if c == 0]
        if missing and split == "train":
            raise FacetlError(f"class(es) {', '.join(missing)} have no training image after the split; add images "
                              "or change --split")
        if missing and (assignment == split).any():
            log(f"warning: class(es) {', '.join(missing[:5])} have no {split} image; their {split} metrics are "
                "undefined")


def check_attributes_per_split(samples: Samples, assignment: np.ndarray, log) -> None:
    """Multi-attribute: positives/labelled per attribute in each split. An attribute whose training images are
    all one value cannot be learnt: an error; one in validation or test leaves its metrics there undefined."""
    for split in ("train", "val", "test"):
        labels = samples.labels[assignment == split]
        positives, labelled = (labels == 1).sum(0), (labels >= 0).sum(0)
        log(f"  {split}: " + ", ".join(f"{n} {p}/{m}" for n, p, m in zip(samples.class_names, positives, labelled)
                                       )[:400] + " (with the attribute / labelled)")
        single = [n for n, p, m in zip(samples.class_names, positives, labelled) if p == 0 or p == m]
        if single and split == "train":
            raise FacetlError(f"attribute(s) {', '.join(single[:5])} have a single value in the training split; add "
                              "images or change --split")
        if single and (assignment == split).any():
            log(f"warning: attribute(s) {', '.join(single[:5])} have a single value in the {split} split; their "
                f"{split} balanced accuracy and ROC-AUC are undefined")


def _counts(assignment: np.ndarray) -> str:
    return ", ".join(f"{name} {int((assignment == name).sum())}" for name in ("train", "val", "test"))
