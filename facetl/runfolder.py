"""Run-folder writes that a kill cannot corrupt, and a lock that keeps two runs out of one folder.

Every file is written under a temporary name in the same folder and renamed into place, so a reader
sees either the old complete file or the new complete file, never half of one.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import torch

from facetl.errors import FacetlError
from facetl.tables import csv_text, plain_cell, spreadsheet_cell  # noqa: F401 (imported from here too)


def temporary_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new hidden file beside `path` (mkstemp's descriptor and name), for `publish` to rename to `path` once
    it is complete: a reader never sees a half-written file under the final name."""
    # the temporary name is capped: a legal 250-byte name plus mkstemp's additions would pass NAME_MAX (255)
    return tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=suffix, dir=path.parent)


def publish(tmp: str | Path, path: str | Path) -> None:
    """A complete temporary file (`temporary_beside`) takes its final name."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: others on a shared filesystem could not read
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def atomic_write_csv(path: str | Path, header: list[str], rows) -> None:
    atomic_write_text(path, csv_text(header, rows))


def atomic_torch_save(path: str | Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_torch_file(path: str | Path, what: str = ""):
    """The one way facetl reads a .pt file: on the CPU, tensors and plain types only.

    `weights_only=True` refuses anything a pickle could run, so a tampered checkpoint or weights file
    is data or nothing; a broken or foreign file becomes one clear FacetlError naming it.
    """
    foreign = _not_a_torch_file(path)
    if foreign:
        raise FacetlError(f"cannot read {what}{path}: it is {foreign}, not a PyTorch file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            reason = "it holds Python objects, not only tensors and plain values (refused: loading it could run code)"
        raise FacetlError(f"cannot read {what}{path}: {reason}") from None


def _not_a_torch_file(path: str | Path) -> str | None:
    """What a file is when its first bytes say it is not torch.save's (a zip archive, or an older pickle):
    an exported model, a photo or a text renamed .pt would otherwise be blamed on Python objects."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None  # torch.load names the problem
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    known = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
             b"\x08": "an ONNX model (facetl export's output; facetl predict and serve read it as MODEL.onnx)"}
    for magic, kind in known.items():
        if head.startswith(magic):
            return kind
    if not head:
        return "empty"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return f"something else (it starts with bytes {head[:8].hex(' ')})"


def checkpoint_weights(state, path: str | Path) -> dict:
    """The model's state dict of a checkpoint, checked: tensors only, and none holding NaN or inf. One rule for
    every file facetl takes weights from (a run's best.pt and last.pt, --weights): a diverged or damaged file
    would otherwise answer NaN for every image."""
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FacetlError(f"{path} does not hold a state dict of tensors")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise FacetlError(f"{path}: {len(broken)} tensor(s) hold NaN or inf (first: {broken[0]}); the file is "
                          "damaged or comes from a run that diverged")
    return state


def prepare_run_folder(path: str | Path) -> Path:
    """Create the run folder (and parents), failing with one line when that is not possible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # per process: torchrun ranks probe at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FacetlError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


class RunLock:
    """A pid file in the run folder; a lock left by a dead process is taken over."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self.held = False

    def __enter__(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _read_pid(self.path)
                if owner is not None and owner != os.getpid() and process_alive(owner):
                    raise FacetlError(
                        f"run folder {self.path.parent} is in use by a running facetl process (pid {owner})"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
