"""From `--data` to Samples: a folder of class folders or an attribute table, positive class last."""
from __future__ import annotations

from pathlib import Path

from facetl.data.folders import read_class_folders
from facetl.data.samples import Samples
from facetl.data.tables import read_attribute_table
from facetl.errors import FacetlError


def load_samples(data: str, images: str | None = None, target: str | None = None,
                 positive: str | None = None) -> Samples:
    """Read a class-folder tree or an attribute table into Samples with the positive class last."""
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



def data_root(config) -> Path:
    """The folder split.csv paths are relative to: the class-folder root, or a table's image folder."""
    path = Path(config.data).expanduser()
    if path.is_dir():
        return path
    return Path(config.images).expanduser() if config.images else path.parent
