"""From `--data` to Samples: a folder of class folders or an attribute table, positive class last."""
from __future__ import annotations

import re
from pathlib import Path

from facetl.data.folders import read_class_folders
from facetl.data.samples import Samples
from facetl.data.spec import DataSpec
from facetl.data.tables import read_attribute_columns, read_attribute_table
from facetl.errors import FacetlError


def load_samples(data: str, images: str | None = None, target: str | None = None,
                 positive: str | None = None, group: str | None = None, flag: str = "--split-by") -> Samples:
    """Read a class-folder tree or an attribute table into Samples with the positive class last.

    `group` (--split-by) gives every file a group that no split may cut: a table column (identity), or
    `path:REGEX`, whose first capture group over each file's relative path is the group. `flag` names the
    option that asked for it in messages (--groups reads groups the same way)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise FacetlError(f"data not found: {path}")
    by_path = group is not None and group.startswith("path:")
    if path.is_dir():
        if target:
            raise FacetlError(f"--target {target} is for attribute tables; the data is a folder of class folders "
                              "(its class is the folder)")
        if group and not by_path:
            raise FacetlError(f"{flag} {group}: the data is a folder of class folders, which has no columns; "
                              "use a table, or --split-by path:REGEX (its first group, found in each file's path)")
        samples = read_class_folders(path)
    else:
        if not target:
            raise FacetlError(f"{path} is a table: name the attribute to learn with --target (e.g. Smiling)")
        image_dir = Path(images).expanduser() if images else None
        if "," in target or target.strip() == "all":  # TrainConfig.targets, read the same way
            targets = None if target.strip() == "all" else [t.strip() for t in target.split(",") if t.strip()]
            samples = read_attribute_columns(path, targets, image_dir, None if by_path else group, flag)
        else:
            samples = read_attribute_table(path, target, image_dir, None if by_path else group, flag)
    if by_path:
        samples = _groups_from_paths(samples, group, flag)
    if group:
        _check_groups(samples, group, flag)
    return _put_positive_last(samples, positive)


def load_groups(data: str, images: str | None, target: str | None, group: str) -> dict[str, str]:
    """--groups: each file's group (path relative to the data root -> value), read as --split-by reads it;
    an unknown column, a class-folder dataset without path:REGEX, or a single group is refused."""
    samples = load_samples(data, images, target, group=group, flag="--groups")
    return dict(zip(samples.paths, samples.groups))


def _groups_from_paths(samples: Samples, group: str, flag: str = "--split-by") -> Samples:
    pattern = re.compile(group[len("path:"):])  # TrainConfig.check has compiled it once already
    if pattern.groups < 1:
        raise FacetlError(f"{flag} {group}: the expression needs a capture group, e.g. path:^([^/]+)/")
    found = [pattern.search(p) for p in samples.paths]
    missed = [p for p, m in zip(samples.paths, found) if m is None or not m.group(1)]
    if missed:
        more = f" (and {len(missed) - 1} more)" if len(missed) > 1 else ""
        raise FacetlError(f"{flag} {group}: no group found in the path {missed[0]}{more}")
    return Samples(samples.root, samples.paths, samples.labels, samples.class_names, [m.group(1) for m in found])


def _check_groups(samples: Samples, group: str, flag: str = "--split-by") -> None:
    distinct = sorted(set(samples.groups))
    if len(distinct) < 2:
        need = ("a split by group needs one group per split at least" if flag == "--split-by" else
                "metrics per group need two groups at least")
        raise FacetlError(f"{flag} {group}: every file is in the one group {distinct[0]!r}; {need}")


def _put_positive_last(samples: Samples, positive: str | None) -> Samples:
    if positive is None:
        return samples
    names = samples.class_names
    if samples.multi_attribute:
        raise FacetlError("--positive does not apply to a multi-attribute run: each attribute's positive is its value 1")
    if positive not in names:
        raise FacetlError(f"--positive {positive!r} is not a class; classes are: {', '.join(names)}")
    if len(names) != 2:
        raise FacetlError("--positive applies to two-class data only")
    if names[1] == positive:
        return samples
    return Samples(samples.root, samples.paths, 1 - samples.labels, [names[1], names[0]], samples.groups)


def data_root(spec: DataSpec) -> Path:
    """The folder split.csv paths are relative to: the class-folder root, or a table's image folder."""
    path = Path(spec.data).expanduser()
    if path.is_dir():
        return path
    return Path(spec.images).expanduser() if spec.images else path.parent
