"""Attribute tables: a CelebA30k-style CSV or CelebA's own `list_attr_celeba.txt`.

Both become Samples with two classes, `not_<target>` (value -1 or 0) and `<target>` (value 1); or, for a
multi-attribute run (`--target Smiling,Male` or `all`), Samples whose labels are one 0/1 column per attribute,
-1 where a row has no value for it (masked in the loss and the metrics, not dropped).
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from facetl.data.samples import Samples
from facetl.errors import FacetlError
from facetl.runfolder import plain_cell

FILENAME_COLUMNS = ("filename", "file", "image", "image_id", "path")
BINARY_VALUES = {"1": 1, "-1": 0, "0": 0, "1.0": 1, "-1.0": 0, "0.0": 0}


def read_table(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Return (attribute names, file names, value rows) from either table format."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FacetlError(f"{path} is not a text table (not UTF-8)") from None
    except OSError as exc:
        raise FacetlError(f"cannot read table {path}: {exc.strerror}") from None
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if first.isdigit():
        return _read_celeba_txt(path, lines)
    return _read_csv(path, text)


def _read_celeba_txt(path: Path, lines: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    lines = [line for line in lines if line.strip()]
    declared = int(lines[0])
    if len(lines) < 2:
        raise FacetlError(f"{path}: CelebA attribute file has no header line")
    names = lines[1].split()
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != len(names) + 1:
            raise FacetlError(f"{path} line {number}: expected a file name and {len(names)} values, "
                              f"found {len(fields)} fields")
        files.append(fields[0])
        rows.append(fields[1:])
    if declared != len(rows):
        warnings.warn(f"{path.name}: count line says {declared} images, the file has {len(rows)} rows; "
                      "using the rows")
    return names, files, rows


def _read_csv(path: Path, text: str) -> tuple[list[str], list[str], list[list[str]]]:
    reader = csv.reader(io.StringIO(text))
    records = [row for row in reader if any(cell.strip() for cell in row)]
    if not records:
        raise FacetlError(f"{path} is empty")
    header = [h.strip() for h in records[0]]
    lowered = [h.lower() for h in header]
    file_col = next((lowered.index(c) for c in FILENAME_COLUMNS if c in lowered), 0)
    names = [h for i, h in enumerate(header) if i != file_col]
    files, rows = [], []
    for number, record in enumerate(records[1:], start=2):
        record = record + [""] * (len(header) - len(record))
        files.append(plain_cell(record[file_col].strip()))  # a table facetl wrote: spreadsheet-safe cells
        rows.append([plain_cell(v.strip()) for i, v in enumerate(record[: len(header)]) if i != file_col])
    return names, files, rows


def read_attribute_table(path: Path, target: str, images: Path | None, group: str | None = None,
                         flag: str = "--split-by") -> Samples:
    """Samples of `target`; with `group` (a column such as identity) each file's group comes from that column
    (`flag`: the option that named it, for messages). A row without a `target` value is left out."""
    one = read_attribute_columns(path, [target], images, group, flag)
    return Samples(one.root, one.paths, one.labels[:, 0].astype(np.int64), [f"not_{target}", target], one.groups)


def read_attribute_columns(path: Path, targets: list[str] | None, images: Path | None, group: str | None = None,
                           flag: str = "--split-by") -> Samples:
    """Samples of several attributes at once (`targets`; None: every column whose values are all 1/0/-1 or
    empty, the group column aside): labels (N, K) int8, 1/0 per attribute and -1 where the value is empty.
    A row with no value for any of them is left out; one attribute's missing value only masks that one."""
    names, files, rows = read_table(path)
    group_column = _column(path, names, group, f"{flag} ") if group else None
    columns = _target_columns(path, names, rows, targets, group_column)
    images = images or path.parent
    if not images.is_dir():
        raise FacetlError(f"image folder not found: {images} (give it with --images DIR)")
    paths, labels, groups, unlabelled, seen = [], [], [], 0, set()
    for number, (name, row) in enumerate(zip(files, rows), start=1):
        values = [row[c] for c in columns]
        if not name or all(v == "" for v in values):
            unlabelled += 1
            continue
        bad = next((c for c, v in zip(columns, values) if v != "" and v not in BINARY_VALUES), None)
        if bad is not None:
            raise FacetlError(f"{path}: row {number} ({name}) has {names[bad]}={row[bad]!r}; attribute values must "
                              "be 1, 0 or -1 (or empty for a missing value)")
        if name in seen:
            warnings.warn(f"{path.name}: {name} is listed more than once; using its first row")
            continue
        if group_column is not None and not row[group_column]:
            raise FacetlError(f"{path}: row {number} ({name}) has no {group} value; {flag} needs every "
                              "file's group")
        seen.add(name)
        paths.append(name)
        labels.append([BINARY_VALUES.get(v, -1) for v in values])
        groups.append(row[group_column] if group_column is not None else "")
    if unlabelled:
        what = f"no {names[columns[0]]} value" if len(columns) == 1 else "no value of any target"
        warnings.warn(f"{path.name}: skipped {unlabelled} row(s) with no file name or {what}")
    absent = [p for p in paths if not (images / p).is_file()]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise FacetlError(f"image named in {path.name} not found: {images / absent[0]}{more}")
    labels = np.asarray(labels, dtype=np.int8).reshape(len(paths), len(columns))
    single = [names[c] for k, c in enumerate(columns) if len(np.unique(labels[:, k][labels[:, k] >= 0])) < 2]
    if single:
        raise FacetlError(f"{', '.join(single)} {'has' if len(single) == 1 else 'have'} a single value in "
                          f"{path.name}; nothing to learn" + ("; name the columns to learn with --target COL1,COL2"
                                                               if targets is None else ""))
    return Samples(images, paths, labels, [names[c] for c in columns],
                   groups if group_column is not None else None)


def _target_columns(path: Path, names: list[str], rows: list[list[str]], targets: list[str] | None,
                    group_column: int | None) -> list[int]:
    """The columns of `targets`; None: every column (the group column aside) whose values are all 1/0/-1 or empty."""
    if targets is not None:
        return [_column(path, names, t, "") for t in targets]
    columns = [i for i, name in enumerate(names) if i != group_column
               and all(row[i] in BINARY_VALUES or row[i] == "" for row in rows)]
    if not columns:
        raise FacetlError(f"--target all: {path.name} has no column of 1/0/-1 values")
    return columns


def _column(path: Path, names: list[str], column: str, flag: str) -> int:
    if column not in names:
        close = [n for n in names if n.lower() == column.lower()]
        hint = f" (did you mean {close[0]}?)" if close else f"; columns are: {', '.join(names[:45])}"
        raise FacetlError(f"{flag}column {column!r} not found in {path}{hint}")
    return names.index(column)
