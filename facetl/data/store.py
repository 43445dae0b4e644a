"""Decoded-image store: every image decoded and resized once into a memory-mapped uint8 array.

The store for a file list and image size lives in `<cache>/images/<key>/`, where the key covers each
file's path, size and modification time and the image size, so a changed or added image makes a new
store. It is built in a temporary folder and renamed into place: a half-written store is never used.
Unreadable files are recorded with their reason instead of stopping the run.

With face alignment (`--faces detect`) each row holds the aligned crop of the photo's face instead of
the whole photo, the key covers the alignment settings, and every face found is kept for faces.csv; a
photo without a usable face is recorded like an unreadable one, with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.data.faces import face_rows, faces_in_photos
from facetl.data.images import UnreadableImage, decode_image
from facetl.data.integrity import building_prefix, file_digest, problem_with, remove_stale_builds
from facetl.errors import FacetlError
from facetl.preprocessing import FaceAlignment, Preprocessing
from facetl.progress import progress_bar


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `--cache-dir` when given, else $FACETL_CACHE, else ~/.cache/facetl."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("FACETL_CACHE", Path.home() / ".cache" / "facetl")).expanduser()


@dataclass
class ImageStore:
    images: np.ndarray            # (N, size, size, 3) uint8, memory-mapped
    hashes: list[str]             # SHA-1 of each file's bytes ("" when unreadable)
    errors: dict[int, str]        # index -> why the file could not be decoded (or has no usable face)
    key: str
    faces: list[list] | None = None  # faces.csv rows, when the store holds aligned face crops

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def readable(self) -> np.ndarray:
        ok = np.ones(len(self.hashes), dtype=bool)
        ok[list(self.errors)] = False
        return ok


def files_key(files: list[Path], extra: str = "", root: Path | None = None) -> str:
    """Identify a file list by path, size and modification time (cheap: no file is read). Paths are
    absolute, or relative to `root` when given (a split's key survives moving the data folder)."""
    digest = hashlib.sha256(extra.encode())
    for f in files:
        name = os.path.relpath(f, root) if root is not None else os.path.abspath(f)
        try:
            st = os.stat(f)
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest()[:24]


def open_image_store(files: list[Path], size: int, cache_dir: Path | None, workers: int | None = None,
                     progress: bool = True, colour: str = "rgb", faces: FaceAlignment | None = None) -> ImageStore:
    """Return the decoded store for `files`, building it if needed.

    With `cache_dir=None` the store is built in a private temporary folder removed with the object.
    """
    extra = f"size={size}" + ("" if colour == "rgb" else f",colour={colour}")
    if faces is not None:
        extra += ",faces=" + json.dumps(faces.to_dict(), sort_keys=True)
    key = files_key(files, extra)
    if cache_dir is not None:
        final = Path(cache_dir) / "images" / key
        remove_stale_builds(final.parent)
        if (final / "meta.json").is_file():
            store = _load_checked(final, len(files), size)
            if store is not None:
                return store
        parent = final.parent
    else:
        final, parent = None, Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=building_prefix(key), dir=parent))
    except OSError as exc:
        raise FacetlError(f"cannot write the image cache in {parent}: {exc.strerror}") from None
    try:
        if faces is None:
            _build(building, files, size, colour, workers, progress)
        else:
            _build_faces(building, files, size, colour, faces, progress)
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


def _load_checked(folder: Path, count: int, size: int) -> ImageStore | None:
    """The store in `folder` if it is what was written; else discard it (the caller rebuilds) and say why."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        problem = problem_with(folder / "images.u8", meta.get("file"))
    except (OSError, ValueError) as exc:
        problem = f"its meta.json is unreadable ({exc})"
    if problem is None:
        return _load(folder, count, size)
    warnings.warn(f"decoded-image cache {folder} is damaged: {problem}; rebuilding it")
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _load(folder: Path, count: int, size: int) -> ImageStore:
    meta = json.loads((folder / "meta.json").read_text())
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(count, size, size, 3))
    errors = {int(k): v for k, v in meta["errors"].items()}
    return ImageStore(images, meta["hashes"], errors, folder.name.split(".")[0], meta.get("faces"))


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, min(512, -(-n // parts)))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _decode_chunk(args) -> tuple[int, list[str], dict[int, str]]:
    store_path, files, start, stop, count, size, colour = args
    images = np.memmap(store_path, dtype=np.uint8, mode="r+", shape=(count, size, size, 3))
    hashes, errors = [], {}
    for i in range(start, stop):
        try:
            images[i], digest = decode_image(files[i - start], size, colour)
        except UnreadableImage as exc:
            digest, errors[i] = "", str(exc)
        hashes.append(digest)
    images.flush()
    return start, hashes, errors


def _build(folder: Path, files: list[Path], size: int, colour: str, workers: int | None, progress: bool) -> None:
    count = len(files)
    store_path = folder / "images.u8"
    np.memmap(store_path, dtype=np.uint8, mode="w+", shape=(max(count, 1), size, size, 3)).flush()
    # the cores this process may use: a sweep's parallel runs are each given their own (facetl.experiments.local)
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    jobs = [(store_path, files[a:b], a, b, count, size, colour) for a, b in _chunks(count, workers * 4)]
    hashes: list[str] = [""] * count
    errors: dict[int, str] = {}
    bar = progress_bar(total=count, desc=f"decoding images at {size}px", unit="img", enabled=progress)
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
    meta = {"count": count, "size": size, "hashes": hashes, "errors": {str(k): v for k, v in errors.items()},
            "file": file_digest(store_path)}
    (folder / "meta.json").write_text(json.dumps(meta))


def _build_faces(folder: Path, files: list[Path], size: int, colour: str, alignment: FaceAlignment,
                 progress: bool) -> None:
    """Detect and align the face of every photo (one process: the detector batches photos itself)."""
    count = len(files)
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=(max(count, 1), size, size, 3))
    hashes, errors, rows = [""] * count, {}, []
    pixels = Preprocessing.pixels(size, colour)
    results = faces_in_photos(files, alignment, size)
    for i, result in enumerate(progress_bar(results, total=count, desc=f"finding faces, aligning at {size}px",
                                            unit="photo", enabled=progress)):
        used = result.used
        if result.error or not used:
            errors[i] = result.error or result.note
        else:
            images[i] = pixels.colour_crop(used[0].crop)
            hashes[i] = hashlib.sha1(Path(files[i]).read_bytes()).hexdigest()
        rows += face_rows(str(files[i]), result)
    images.flush()
    del images
    meta = {"count": count, "size": size, "hashes": hashes, "errors": {str(k): v for k, v in errors.items()},
            "faces": rows, "file": file_digest(folder / "images.u8")}
    (folder / "meta.json").write_text(json.dumps(meta))
