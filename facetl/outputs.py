"""Where a command may write: names derived from the data that stay inside the output folder, distinct names
for distinct inputs, and output folders kept out of the folders a command reads.

A table row or a file path is data: `/home/u/photos/a.jpg` or `../../x/p.jpg` names a photo to read, never a
place to write. Every output name a command derives from one goes through `contained_name`, then
`unique_names`, then `inside`, so no row can steer a write outside the output folder or onto another's output.
Every output a command is given goes through `refuse_misplaced` before any work: never an input, never inside
the data, never inside another run.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath
from typing import Iterable, Sequence

from facetl.errors import FacetlError
from facetl.runreader import is_run_folder

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


def refuse_misplaced(out: str | Path, flag: str, reads: Iterable[tuple[str, Path | None]] = (),
                     own_run: str | Path | None = None, given: str | None = None) -> None:
    """The one rule for every output of every command (--out, --annotate, --track-dir, --tracking-uri, the
    tracks CSV), checked before any work and before any folder is made. An output is never:
    - one of the command's inputs: --overwrite replaces an earlier output, never a video, photo or table read;
    - inside a folder the command reads (its data, an input folder): the next run would read this one's
      output as input (a run's plots as training images), and its files would sit among the user's;
    - inside a run folder other than `own_run`, the one the command itself writes: a run's folder holds its
      own records only, which `runs`, `--resume` and MLflow read back as the run's.
    `reads`: (what it is, path) pairs, e.g. ("data folder", ds); a folder refuses anything inside it, a file
    only itself. `given`: the flag's value as the user wrote it (a URI), named in the message instead of `out`."""
    target = Path(out).expanduser().resolve()
    label = f"{flag} {given if given is not None else out}"
    for what, path in reads:
        if path is None:
            continue
        source = Path(path).expanduser().resolve()
        if source.is_dir() and (target == source or source in target.parents):
            raise FacetlError(f"{label} is inside the {what} {path}; choose a place outside it")
        if target == source or _same_file(target, source):
            raise FacetlError(f"{label} is the {what} {path}; an input is never written over, even with "
                              "--overwrite: choose another name")
    own = Path(own_run).expanduser().resolve() if own_run is not None else None
    for place in [target, *target.parents]:
        if place != own and is_run_folder(place):
            where = "is the run folder" if place == target else "is inside the run folder"
            raise FacetlError(f"{label} {where} {place}, which holds that run's own records only; choose a "
                              "place outside it")


def data_reads(data: str | Path | None, images: str | Path | None = None) -> list[tuple[str, Path]]:
    """What a dataset's command reads, for `refuse_misplaced`: a class-folder root (every image in it is read,
    so a run written inside it would become training data), or a table and the folder its images are in."""
    reads = []
    if data is not None:
        path = Path(data).expanduser()
        reads.append(("data folder" if path.is_dir() else "data table", path))
    if images is not None:
        reads.append(("images folder", Path(images).expanduser()))
    return reads


def input_reads(inputs: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """Photos, videos and folders a command reads (predict, explain), for `refuse_misplaced`."""
    return [("input folder" if Path(i).expanduser().is_dir() else "input", Path(i).expanduser()) for i in inputs]


def _same_file(a: Path, b: Path) -> bool:
    """Two names of one file (a hard link, a symbolic link on the way)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def unwritable(folder: Path) -> str | None:
    """Why files could not be made in `folder` (or in the folder it would be made in), or None. The nearest
    existing folder decides."""
    for place in [folder, *folder.parents]:
        if place.exists():
            if not place.is_dir():
                return f"{place} is a file, not a folder"
            if not os.access(place, os.W_OK | os.X_OK):
                return f"{place} is not writable"
            return None
    return "no existing folder above it"


def mirrored_names(sources: Sequence[str]) -> list[str]:
    """Each source's path relative to the folder all of them share (never absolute, never with `..`), for an
    output folder that mirrors the inputs' layout. Symbolic links are not followed: a linked folder's files
    keep the link's path."""
    absolute = [os.path.abspath(s) for s in sources]
    if not absolute:
        return []
    common = os.path.commonpath([os.path.dirname(a) for a in absolute])
    return [contained_name(os.path.relpath(a, common)) for a in absolute]
