"""From a config to data ready for training: decoded store, unreadable files set aside, duplicates
handled, split made (or reused from split.csv) and saved."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.data.samples import Samples, load_samples, stratified_limit
from facetl.data.split import apply_duplicate_policy, load_split, make_split, save_split, split_hash
from facetl.data.store import ImageStore, default_cache_dir, files_key, open_image_store
from facetl.errors import FacetlError
from facetl.runfolder import atomic_write_csv, atomic_write_json


@dataclass
class PreparedData:
    samples: Samples              # every file of the store, in store order
    store: ImageStore
    assignment: np.ndarray        # per store index: 'train', 'val', 'test', or '' (left out)
    cache_dir: Path
    normalize: list[float] | None

    @property
    def labels(self) -> np.ndarray:
        return self.samples.labels

    @property
    def class_names(self) -> list[str]:
        return self.samples.class_names

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == split)

    def normalization(self, backbone) -> tuple[tuple, tuple]:
        if self.normalize is None:
            return backbone.mean, backbone.std
        if len(self.normalize) == 2:
            return (self.normalize[0],) * 3, (self.normalize[1],) * 3
        return tuple(self.normalize[:3]), tuple(self.normalize[3:])


def read_samples(config) -> Samples:
    """The labelled file list named by the config (a split file, when given, decides the files)."""
    samples = load_samples(config.data, config.images, config.target, config.positive)
    return samples


def cache_folder(config) -> Path:
    if not config.cache:
        return Path(tempfile.mkdtemp(prefix="facetl-nocache-"))
    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


def open_store_together(files: list[Path], size: int, store_dir: Path | None, workers: int | None, progress: bool,
                        group) -> ImageStore:
    """With several processes, the first on each machine decodes; the others then open its store."""
    if group is None or not group.active or store_dir is None:
        return open_image_store(files, size, store_dir, workers, progress)
    store = open_image_store(files, size, store_dir, workers, progress) if group.is_local_main else None
    group.barrier()
    return store or open_image_store(files, size, store_dir, workers, progress=False)


def prepare_data(config, samples: Samples, img_size: int, folder: Path, log, progress: bool = True,
                 group=None) -> PreparedData:
    """Decode, clean and split `samples`; write split.csv (and skipped_images.csv) into the run folder.

    Every process computes the same split; only the main one (`group.is_main`) writes files.
    """
    writes = group is None or group.is_main
    cache_dir = cache_folder(config)
    store_dir = cache_dir if config.cache else None
    split_file = folder / "split.csv" if (folder / "split.csv").is_file() else (
        Path(config.split_file) if getattr(config, "split_file", None) else None)
    if split_file is not None:
        split_samples, assignment = load_split(split_file, samples.root, samples.class_names)
        check_unchanged(split_samples, split_file)
        store = open_store_together(split_samples.files(), img_size, store_dir, config.workers, progress, group)
        if store.errors:
            first = next(iter(store.errors))
            raise FacetlError(f"{split_samples.files()[first]} has become unreadable since the split was made: "
                              f"{store.errors[first]}")
        log(f"split: reused {split_file} ({_counts(assignment)})")
        if split_file != folder / "split.csv" and writes:
            save_split(folder / "split.csv", split_samples, assignment)
            if split_file.with_suffix(".json").is_file():
                (folder / "split.json").write_bytes(split_file.with_suffix(".json").read_bytes())
        return PreparedData(split_samples, store, assignment, cache_dir, config.normalize)

    samples = stratified_limit(samples, config.limit, config.seed)
    log(f"data: {len(samples)} images in {len(samples.class_names)} classes "
        f"({', '.join(f'{k} {v}' for k, v in samples.counts().items())})"[:400])
    store = open_store_together(samples.files(), img_size, store_dir, config.workers, progress, group)
    keep = store.readable()
    if store.errors and writes:
        rows = [(samples.paths[i], store.errors[i]) for i in sorted(store.errors)]
        atomic_write_csv(folder / "skipped_images.csv", ["path", "reason"], rows)
        log(f"warning: skipped {len(rows)} unreadable image(s), listed in {folder / 'skipped_images.csv'}; "
            f"first: {rows[0][0]} ({rows[0][1]})")
    duplicate_keep, note = apply_duplicate_policy(samples, store.hashes, config.duplicates)
    if note:
        log(note)
    keep &= duplicate_keep
    kept = np.flatnonzero(keep)
    if len(np.unique(samples.labels[kept])) < 2:
        raise FacetlError("fewer than two classes have readable images; nothing to learn")
    assignment = np.full(len(samples), "", dtype=object)
    assignment[kept] = make_split(samples.take(kept), [store.hashes[i] for i in kept], config.split, config.seed)
    if writes:
        save_split(folder / "split.csv", samples.take(kept), assignment[kept])
        atomic_write_json(folder / "split.json", {"files_hash": split_hash(samples.take(kept)),
                                                  "files_key": files_key(samples.take(kept).files()),
                                                  "seed": config.seed, "fractions": config.split,
                                                  "counts": _counts(assignment)})
    log(f"split: {_counts(assignment)} (seed {config.seed}), saved to {folder / 'split.csv'}")
    return PreparedData(samples, store, assignment, cache_dir, config.normalize)


def check_unchanged(samples: Samples, split_file: Path, allow_changed: bool = False) -> None:
    """Refuse data whose files changed (gone, or different size or time) since the split was made."""
    missing = [p for p in samples.files() if not p.is_file()]
    if missing:
        raise FacetlError(f"the data changed since {split_file} was made: {missing[0]} is gone"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    meta = split_file.with_suffix(".json")
    if allow_changed or not meta.is_file():
        return
    import json

    recorded = json.loads(meta.read_text()).get("files_key")
    if recorded and recorded != files_key(samples.files()):
        raise FacetlError(f"the data changed since {split_file} was made (a file's size or modification time "
                          "differs); pass --allow-changed-data to use it anyway")


def _counts(assignment: np.ndarray) -> str:
    return ", ".join(f"{name} {int((assignment == name).sum())}" for name in ("train", "val", "test"))
