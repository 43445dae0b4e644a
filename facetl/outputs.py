"""Where a command may write: names derived from the data that stay inside the output folder, distinct names
for distinct inputs, and output folders kept out of the folders a command reads.

A table row or a file path is data: `/home/u/photos/a.jpg` or `../../x/p.jpg` names a photo to read, never a
place to write. Every output name a command derives from one goes through `contained_name`, then
`unique_names`, then `inside`, so no row can steer a write outside the output folder or onto another's output.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath
from typing import Iterable, Sequence

from facetl.errors import FacetlError

# what an absolute path's anchor and a `..` become inside the output folder: a folder of that name
ROOT_PART, UP_PART = "_root", "_up"


def contained_name(name: str) -> str:
    """A relative POSIX path for `name` that stays inside any folder it is joined to: an absolute path's
    anchor becomes ROOT_PART, each `..` becomes UP_PART, `.` parts go. `a/b.jpg` stays `a/b.jpg`."""
    path = PurePath(name)
    parts = [ROOT_PART] if path.anchor else []
    for part in path.parts[1 if path.anchor else 0:]:
        if part == "..":
            parts.append(UP_PART)
        elif part not in ("", "."):
            parts.append(part)
    return PurePosixPath(*parts).as_posix() if parts else "_"


def unique_names(wanted: Sequence[str], reserved: Iterable[str] = ()) -> list[str]:
    """`wanted` made distinct, in order: a name already taken (by an earlier one or by `reserved`) gets -2, -3,
    ... before its extension. Names are compared case-insensitively, as macOS and Windows folders do."""
    taken = {name.casefold() for name in reserved}
    names = []
    for name in wanted:
        candidate, path, k = name, PurePosixPath(name), 2
        while candidate.casefold() in taken:
            candidate = path.with_name(f"{path.stem}-{k}{path.suffix}").as_posix()
            k += 1
        taken.add(candidate.casefold())
        names.append(candidate)
    return names


def inside(folder: Path, name: str) -> Path:
    """folder/name, refused with one line when it would land outside `folder` (a `..`, an absolute name, or a
    symbolic link in the way)."""
    target = folder / name
    root = folder.resolve()
    if root != target.parent.resolve() and root not in target.parent.resolve().parents:
        raise FacetlError(f"{target} would be written outside {folder} (through a symbolic link or a ..); "
                          "nothing is written there")
    return target


def refuse_inside_inputs(out: Path, inputs: Iterable[Path], flag: str, what: str = "input folder") -> None:
    """A command's output folder may not be, or be inside, a folder it reads: a rerun would read its own
    output as input, and its files would sit among the user's."""
    where = out.expanduser().resolve()
    for folder in inputs:
        root = Path(folder).expanduser().resolve()
        if where == root or root in where.parents:
            raise FacetlError(f"{flag} {out} is inside the {what} {folder}; choose a folder outside it")


def mirrored_names(sources: Sequence[str]) -> list[str]:
    """Each source's path relative to the folder all of them share (never absolute, never with `..`), for an
    output folder that mirrors the inputs' layout. Symbolic links are not followed: a linked folder's files
    keep the link's path."""
    absolute = [os.path.abspath(s) for s in sources]
    if not absolute:
        return []
    common = os.path.commonpath([os.path.dirname(a) for a in absolute])
    return [contained_name(os.path.relpath(a, common)) for a in absolute]
