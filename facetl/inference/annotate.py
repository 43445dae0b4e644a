"""Photos and video frames with their faces boxed and labelled: what `facetl predict --annotate` writes.

Photos become NAME.annotated.png inside the --annotate folder (annotation_names: mirrored below the folder
the photos share, distinct inputs to distinct files), every target checked before anything is written;
video frames are painted by `FacePainter`, one colour per track.
"""
from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facetl.data.images import read_photo
from facetl.errors import FacetlError
from facetl.inference.photos import Prediction
from facetl.inference.video import TrackedFace
from facetl.outputs import inside, mirrored_names, unique_names
from facetl.runfolder import atomic_write_bytes


def annotation_names(sources: list[str], ending: str = ".annotated.png") -> list[str]:
    """Each photo's (or video's: `ending` .annotated.mp4) annotated file inside DIR: its path below the folder
    all of them share, as NAME.annotated.png (a/x.jpg and b/x.jpg stay apart as a/x... and b/x...); files that
    differ only in their extension keep it (x.jpg.annotated.png, x.png.annotated.png). Distinct inputs,
    distinct files."""
    mirrored = mirrored_names(sources)
    plain = [PurePosixPath(m).with_suffix("").as_posix() + ending for m in mirrored]
    clashes = Counter(name.casefold() for name in plain)
    return unique_names([m + ending if clashes[p.casefold()] > 1 else p for m, p in zip(mirrored, plain)])


def plan_annotations(predictions: list[Prediction], folder: Path, overwrite: bool = False,
                     table: Path | None = None) -> list[tuple[Path, list[Prediction], Path]]:
    """(photo, its rows, where its annotated image goes), every target checked before anything is written:
    inside FOLDER, not an existing file unless `overwrite`, never one of the photos themselves."""
    by_photo: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_photo.setdefault(p.path, []).append(p)
    sources = list(by_photo)
    targets = [inside(folder, name) for name in annotation_names(sources)]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FacetlError(f"{existing[0]} exists{more}; pass --overwrite to replace it or choose another "
                          "--annotate folder")
    photos = {os.path.realpath(s) for s in sources}
    hit = next((t for t in targets if os.path.realpath(t) in photos), None)
    if hit is not None:
        raise FacetlError(f"--annotate would write {hit}, which is one of the photos; choose another folder")
    if table is not None and any(os.path.realpath(t) == os.path.realpath(table) for t in targets):
        raise FacetlError(f"--out and an annotated photo would both be {table}; choose another --out or --annotate")
    return [(Path(s), by_photo[s], t) for s, t in zip(sources, targets)]


def annotate(predictions: list[Prediction], folder: Path, overwrite: bool = False) -> list[Path]:
    """Each photo with its faces boxed and labelled, in FOLDER as annotation_names says; the files written."""
    plan = plan_annotations(predictions, folder, overwrite)
    return write_annotations(plan)


def write_annotations(plan: list[tuple[Path, list[Prediction], Path]]) -> list[Path]:
    written = []
    for source, rows, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, _annotated_png(source, rows))
        written.append(target)
    return written


def _caption(p: Prediction) -> str:
    return p.label if p.probability is None else f"{p.label} {p.probability:.2f}"  # multi-attribute: the label


def _annotated_png(source: Path, rows: list[Prediction]) -> bytes:
    image = Image.fromarray(read_photo(source))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 45)))
    for p in rows:
        if p.box is None:
            draw.text((6, 6), p.note or _caption(p), fill=(255, 60, 60), font=font)
            continue
        x, y, w, h = p.box
        draw.rectangle((x, y, x + w, y + h), outline=(40, 220, 60), width=width)
        text = _caption(p)
        box = draw.textbbox((x, y), text, font=font)
        top = max(0, y - (box[3] - box[1]) - 4)
        left = max(0, min(x, image.width - (box[2] - box[0] + 6)))  # a face at the right edge: its label stays in
        draw.rectangle((left, top, left + box[2] - box[0] + 6, top + box[3] - box[1] + 4), fill=(40, 220, 60))
        draw.text((left + 3, top + 1 - box[1] + y), text, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def annotated_video_names(videos: list[Path]) -> list[str]:
    """NAME.annotated.mp4 for each video, at its path below the folder the videos share, named as photos'
    are: clip.mp4 and clip.mkv side by side keep their extensions (clip.mp4.annotated.mp4, ...)."""
    return annotation_names(list(map(str, videos)), ending=".annotated.mp4")


# One colour per track (cycled): a face keeps its colour while it keeps its number
_PALETTE = [(40, 220, 60), (255, 170, 30), (60, 160, 255), (240, 70, 200), (250, 235, 60), (90, 230, 230),
            (255, 90, 90), (170, 120, 255)]


class FacePainter:
    """Boxes, track numbers and labels drawn on frames (PIL), sized for the frame."""

    def __init__(self, width: int, height: int):
        self.width = width
        self.line = max(2, round(max(width, height) / 320))
        self.font = ImageFont.load_default(size=max(12, round(max(width, height) / 40)))

    def paint(self, pixels: np.ndarray, faces: list[TrackedFace]) -> np.ndarray:
        if not faces:
            return pixels
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for face in faces:
            colour = _PALETTE[(face.track - 1) % len(_PALETTE)]
            x, y, w, h = face.box
            draw.rectangle((x, y, x + w, y + h), outline=colour, width=self.line)
            text = f"#{face.track} {face.label}" + ("" if face.probability is None else f" {face.probability:.2f}")
            left, top, right, bottom = draw.textbbox((0, 0), text, font=self.font)
            y0 = max(0, y - (bottom - top) - 6)
            x0 = max(0, min(x, self.width - (right - left + 6)))  # a face at the frame's right edge: the label stays in
            draw.rectangle((x0, y0, x0 + right - left + 6, y0 + bottom - top + 6), fill=colour)
            draw.text((x0 + 3 - left, y0 + 3 - top), text, fill=(0, 0, 0), font=self.font)
        return np.asarray(image)
