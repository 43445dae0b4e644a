"""Cache entries that prove their contents: size and a CRC-32 recorded when written, checked when opened.

A decoded store or feature file overwritten, truncated or half-copied is found when it is opened, not
after an epoch on blank images: the caller discards it and rebuilds it, with a warning. CRC-32 (zlib)
reads 2 GiB/s here (measured on a warm 1 GiB file), so checking a 4.3 GB store costs about 2 s against
minutes of decoding it.
A folder still being built carries its builder's pid, so one left by a killed process is removed.
"""
from __future__ import annotations

import os
import re
import shutil
import zlib
from pathlib import Path

from facetl.runfolder import process_alive

CHUNK = 1 << 24
CACHE_KINDS = ("images", "features")      # <cache>/images/<key>: decoded stores; features/<key>: frozen features
ENTRY_NAME = re.compile(r"[0-9a-f]{24}")  # a key: the first 24 hex digits of a SHA-256 (store.py, features.py)


def file_digest(path: Path) -> dict:
    """{'bytes': size, 'crc32': hex} of a file, read in chunks (it may be larger than memory)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return {"bytes": path.stat().st_size, "crc32": f"{crc:08x}"}


def problem_with(path: Path, recorded: dict | None) -> str | None:
    """Why `path` is not what its meta.json recorded, or None when it is (size first: that costs nothing)."""
    if not recorded:
        return "it records no size or checksum (made by an older facetl)"
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != recorded["bytes"]:
        return f"{path.name} has {size} bytes, {recorded['bytes']} were written"
    if file_digest(path)["crc32"] != recorded["crc32"]:
        return f"{path.name} does not match the checksum written with it (changed or corrupted since)"
    return None


def building_prefix(key: str) -> str:
    """Name prefix of a folder being built by this process: `<key>.building-<pid>-`."""
    return f"{key}.building-{os.getpid()}-"


def remove_stale_builds(parent: Path) -> None:
    """Remove `*.building-<pid>-*` folders whose process is gone (killed while decoding or caching)."""
    if not parent.is_dir():
        return
    for folder in parent.glob("*.building-*"):
        pid = folder.name.split(".building-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def cache_entries(root: Path) -> list[Path]:
    """The entries facetl made in a cache folder: a key-named folder with the meta.json written last. Anything
    else there (a user's folder, a file, a half-copied entry) is not facetl's and is never listed or removed."""
    return [entry for kind in CACHE_KINDS if (root / kind).is_dir() for entry in sorted((root / kind).iterdir())
            if ENTRY_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
            and (entry / "meta.json").is_file()]


def clear_cache(root: Path) -> int:
    """Remove facetl's entries (and builds left by killed runs) from a cache folder; return how many entries."""
    for kind in CACHE_KINDS:
        remove_stale_builds(root / kind)
    entries = cache_entries(root)
    for entry in entries:
        shutil.rmtree(entry)
    return len(entries)
