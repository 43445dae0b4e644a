"""Decoded-image store: every image decoded and resized once into a memory-mapped uint8 array.

The store for a file list and image size lives in `<cache>/images/<key>/`, where the key covers each
file's path, size and modification time and the image size, so a changed or added image makes a new
store. It is built in a temporary folder and renamed into place: a half-written store is never used.
Unreadable files are recorded with their reason instead of stopping the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facetl.data.images import UnreadableImage, decode_image
from facetl.errors import FacetlError


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACETL_CACHE", Path.home() / ".cache" / "facetl")).expanduser()


@dataclass
class ImageStore:
    images: np.ndarray            # (N, size, size, 3) uint8, memory-mapped
    hashes: list[str]             # SHA-1 of each file's bytes ("" when unreadable)
    errors: dict[int, str]        # index -> why the file could not be decoded
    key: str

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def readable(self) -> np.ndarray:
        ok = np.ones(len(self.hashes), dtype=bool)
        ok[list(self.errors)] = False
        return ok


def files_key(files: list[Path], extra: str = "") -> str:
    """Identify a file list by path, size and modification time (cheap: no file is read)."""
    digest = hashlib.sha256(extra.encode())
    for f in files:
        try:
            st = os.stat(f)
            digest.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(f)}\0missing\n".encode())
    return digest.hexdigest()[:24]


def open_image_store(files: list[Path], size: int, cache_dir: Path | None, workers: int | None = None,
                     progress: bool = True) -> ImageStore:
    """Return the decoded store for `files`, building it if needed.

    With `cache_dir=None` the store is built in a private temporary folder removed with the object.
    """
    key = files_key(files, f"size={size}")
    if cache_dir is not None:
        final = Path(cache_dir) / "images" / key
        if (final / "meta.json").is_file():
            return _load(final, len(files), size)
        parent = final.parent
    else:
        final, parent = None, Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f"{key}.building-", dir=parent))
    except OSError as exc:
        raise FacetlError(f"cannot write the image cache in {parent}: {exc.strerror}") from None
    try:
        _build(building, files, size, workers, progress)
        if final is None:
            store = _load(building, len(files), size)
            weakref.finalize(store, shutil.rmtree, building, True)
            return store
        try:
            os.rename(building, final)
        except OSError:  # another process finished the same store first
            shutil.rmtree(building, ignore_errors=True)
        return _load(final, len(files), size)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _load(folder: Path, count: int, size: int) -> ImageStore:
    meta = json.loads((folder / "meta.json").read_text())
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(count, size, size, 3))
    errors = {int(k): v for k, v in meta["errors"].items()}
    return ImageStore(images, meta["hashes"], errors, folder.name.split(".")[0])


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, min(512, -(-n // parts)))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _decode_chunk(args) -> tuple[int, list[str], dict[int, str]]:
    store_path, files, start, stop, count, size = args
    images = np.memmap(store_path, dtype=np.uint8, mode="r+", shape=(count, size, size, 3))
    hashes, errors = [], {}
    for i in range(start, stop):
        try:
            images[i], digest = decode_image(files[i - start], size)
        except UnreadableImage as exc:
            digest, errors[i] = "", str(exc)
        hashes.append(digest)
    images.flush()
    return start, hashes, errors


def _build(folder: Path, files: list[Path], size: int, workers: int | None, progress: bool) -> None:
    count = len(files)
    store_path = folder / "images.u8"
    np.memmap(store_path, dtype=np.uint8, mode="w+", shape=(max(count, 1), size, size, 3)).flush()
    workers = workers or os.cpu_count() or 1
    jobs = [(store_path, files[a:b], a, b, count, size) for a, b in _chunks(count, workers * 4)]
    hashes: list[str] = [""] * count
    errors: dict[int, str] = {}
    bar = tqdm(total=count, desc=f"decoding images at {size}px", unit="img", disable=not progress,
               leave=False)
    if workers == 1 or len(jobs) == 1:
        results = map(_decode_chunk, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_decode_chunk, jobs)
    try:
        for start, chunk_hashes, chunk_errors in results:
            hashes[start:start + len(chunk_hashes)] = chunk_hashes
            errors.update(chunk_errors)
            bar.update(len(chunk_hashes))
    finally:
        bar.close()
        if workers != 1 and len(jobs) != 1:
            pool.shutdown()
    meta = {"count": count, "size": size, "hashes": hashes, "errors": {str(k): v for k, v in errors.items()}}
    (folder / "meta.json").write_text(json.dumps(meta))
