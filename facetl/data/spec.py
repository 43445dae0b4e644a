"""What the data code needs to know of a run: the files, the labels, the split, the cache, nothing else.

`data_spec(config)` is the one place a TrainConfig becomes a DataSpec, so the data code reads typed fields
instead of a whole training configuration (and a library user can call it with a DataSpec of their own).
"""
from __future__ import annotations

from dataclasses import dataclass

from facetl.config import TrainConfig


@dataclass(frozen=True)
class DataSpec:
    data: str                        # class-folder root, CSV table or list_attr_celeba.txt
    images: str | None = None        # image folder for a table
    target: str | None = None        # attribute column(s) of a table
    positive: str | None = None      # positive class name (two classes)
    split: tuple[float, ...] = (0.8, 0.1, 0.1)
    split_file: str | None = None    # reuse this split.csv
    split_by: str | None = None      # a table column or path:REGEX; each group wholly in one split
    groups: str | None = None        # a table column or path:REGEX: final metrics per group
    limit: int | None = None         # stratified subset of this many images
    duplicates: str = "drop"         # keep | drop | error
    seed: int = 0
    cache: bool = True               # False: a private temporary folder, not the shared cache
    cache_dir: str | None = None     # default: ~/.cache/facetl or $FACETL_CACHE
    workers: int | None = None       # decode processes; None: one per core


def data_spec(config: TrainConfig) -> DataSpec:
    return DataSpec(data=config.data, images=config.images, target=config.target, positive=config.positive,
                    split=tuple(config.split), split_file=config.split_file, split_by=config.split_by,
                    groups=config.groups, limit=config.limit, duplicates=config.duplicates, seed=config.seed,
                    cache=config.cache, cache_dir=config.cache_dir, workers=config.workers)
