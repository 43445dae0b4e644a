"""Finding the demo's dataset: the shared copy when present, else SMILEsmileD from its public repository."""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from facetl.errors import FacetlError

SMILES_URL = "https://github.com/hromi/SMILEsmileD/archive/refs/heads/master.zip"
SHARED_SMILES = Path("../shared/datasets/SMILEsmileD/SMILEs")


def smiles_dataset(cache_dir: Path, url: str = SMILES_URL, shared: Path = SHARED_SMILES) -> Path:
    """The SMILEs class-folder root: shared copy, cached download, or a fresh download (with progress)."""
    if shared.is_dir():
        return shared
    target = cache_dir / "datasets" / "SMILEsmileD"
    found = _find_smiles(target)
    if found:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "smiles.zip"
        _download(url, archive)
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        except zipfile.BadZipFile:
            raise FacetlError(f"the download from {url} is not a zip archive") from None
        if not _find_smiles(unpacked):
            raise FacetlError(f"the archive from {url} has no SMILEs/positives and SMILEs/negatives folders")
        os.replace(unpacked, target)  # whole folder appears at once: a half-unpacked copy is never used
    return _find_smiles(target)


def _find_smiles(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    for candidate in [folder, *folder.glob("*"), *folder.glob("*/*")]:
        if candidate.name == "SMILEs" and (candidate / "positives").is_dir() and (candidate / "negatives").is_dir():
            return candidate
    return None


def _download(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(path, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="downloading SMILEsmileD") as bar:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise FacetlError(f"cannot download SMILEsmileD from {url} ({getattr(exc, 'reason', exc)}); "
                          f"put its SMILEs folder at {SHARED_SMILES} or pass --data") from None
    if path.stat().st_size == 0:
        shutil.rmtree(path, ignore_errors=True)
        raise FacetlError(f"the download from {url} is empty")
