"""Decoding one image file into a square uint8 RGB array, whatever the file throws at us."""
from __future__ import annotations

import hashlib
import os
import stat
import warnings
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facetl.preprocessing import Preprocessing

# Files above this many pixels are refused rather than decoded: a decompression bomb would take the
# machine's memory. 8K x 8K is far beyond any face photo.
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 512 * 2**20  # a 64-megapixel photo is well under this, even as uncompressed TIFF


class UnreadableImage(Exception):
    """The file is not a decodable image; the message says why."""


def decode_image(path: Path, size: int, colour: str = "rgb") -> tuple[np.ndarray, str]:
    """Return the image resized to (size, size, 3) uint8 and the SHA-1 of the file's bytes.

    `colour="grey"` makes it grey in all three channels, as for a model trained on grey photos."""
    data = _read_bytes(path, MAX_PIXELS)
    digest = hashlib.sha1(data).hexdigest()

    def square(image: Image.Image) -> np.ndarray:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
        return Preprocessing.pixels(size, colour).square(_to_rgb(ImageOps.exif_transpose(image)))

    return _decode(data, MAX_PIXELS, square), digest


def _read_bytes(path: Path, max_pixels: int) -> bytes:
    """The file's bytes, once its size and its image header (pixel count) have passed: a bomb or a huge
    file is refused after reading a few kilobytes, not after reading it whole."""
    try:
        with _open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise UnreadableImage("empty file")
            if size > MAX_FILE_BYTES:
                raise UnreadableImage(f"too large a file ({size / 2**20:,.0f} MiB; at most "
                                      f"{MAX_FILE_BYTES // 2**20} MiB)")
            _decode(f, max_pixels, lambda image: None)  # Pillow reads only the header here
            f.seek(0)
            return f.read()
    except OSError as exc:
        raise UnreadableImage(exc.strerror or str(exc)) from None


def _open_regular_file(path: Path) -> BinaryIO:
    """The file open for reading, or UnreadableImage when it is not a regular file: a named pipe would block
    the read forever and a device (/dev/zero) never ends. Opened without blocking, then checked, so that a
    pipe is refused rather than waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else
                    "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a special file")
            raise UnreadableImage(f"not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode(data: bytes | BinaryIO, max_pixels: int, prepare: Callable[[Image.Image], np.ndarray | None]):
    """Open `data` (bytes, or an open file) as an image, refuse it from its header when it has too many pixels, then `prepare` it;
    whatever Pillow raises for a broken file becomes UnreadableImage with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data) if isinstance(data, bytes) else data) as image:
                if image.width * image.height > max_pixels:
                    raise UnreadableImage(f"too large ({image.width}x{image.height} pixels, "
                                          f"more than {max_pixels:,})")
                return prepare(image)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("cannot decode: not an image file (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"too large ({exc})") from None
    except Exception as exc:  # PIL raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(f"cannot decode: {reason}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: scale the real range to 8 bits instead of clipping to white
        values = np.asarray(image, dtype=np.float64)
        top = values.max() or 1.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # composite transparent pixels on white, as image viewers show them
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def read_photo(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return a whole photo as (height, width, 3) uint8 RGB at its own size, upright.

    The same safety as `decode_image`: the pixel count is checked from the header before any pixel is
    decoded, EXIF orientation is applied, alpha is composited on white, 16-bit and grey become 8-bit
    RGB; anything else becomes UnreadableImage with the reason."""
    return photo_from_bytes(_read_bytes(path, max_pixels), max_pixels)


def photo_from_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`read_photo` for a file already in memory (an upload): decoded from the bytes, never written to disk."""
    if not data:
        raise UnreadableImage("empty file")
    return _decode(data, max_pixels,
                   lambda image: np.asarray(_to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8))
