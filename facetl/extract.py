"""`facetl faces`: cut a dataset of whole photos into a dataset of aligned face crops, and show how.

The output has the input's layout (class folders keep their relative paths; a table's crops keep their
file names, with a copy of the table listing only the photos that gave a crop), so it trains like any
crop dataset. Next to the crops: `faces.csv` (every face found, with box, score, landmarks, and used or
why not; photos without a face are rows that say so), `faces.png` (a contact sheet of sampled photos with
their boxes and landmarks, used faces green and rejected ones red, and their aligned crops) and
`faces.json` (the counts and the settings).
"""
from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from facetl.data.faces import FACES_CSV_HEADER, NO_FACE, PhotoFaces, detector_for, face_rows, faces_in_photos
from facetl.data.images import UnreadableImage, read_photo
from facetl.data.load import load_samples
from facetl.data.samples import Samples
from facetl.data.tables import read_table
from facetl.errors import FacetlError
from facetl.preprocessing import FaceAlignment
from facetl.runfolder import atomic_write_bytes, atomic_write_csv, atomic_write_json
from facetl.progress import progress_bar

SHEET_PHOTOS = 12
_USED_COLOUR, _REJECTED_COLOUR = (40, 220, 60), (235, 40, 40)


def extract_faces(data: str | Path, out: str | Path, images: str | Path | None = None, target: str | None = None,
                  alignment: FaceAlignment = FaceAlignment(), size: int = 112, progress: bool = True,
                  seed: int = 0) -> dict:
    """Detect and align the faces of every photo of `data` into OUT; return the counts written to faces.json."""
    start = time.perf_counter()
    samples = load_samples(str(data), str(images) if images else None, target)
    out = _prepare_out(Path(out), samples.root)
    detector = detector_for(alignment)
    sheet_sources = _sheet_sample(samples, seed)
    rows, counts, sheet, kept = [], Counter(), {}, {}
    results = faces_in_photos(samples.files(), alignment, size, detector=detector)
    for relative, result in progress_bar(zip(samples.paths, results), total=len(samples), unit="photo",
                                         desc="faces", enabled=progress, leave=True):
        crop_name = _write_crop(out, relative, result)
        if crop_name:
            kept[relative] = crop_name
        rows.extend(face_rows(relative, result, crop_name))
        _count(counts, result)
        if relative in sheet_sources:
            sheet[relative] = result
    if target:
        _write_table(Path(data), out, kept)
    atomic_write_csv(out / "faces.csv", FACES_CSV_HEADER, rows)
    atomic_write_bytes(out / "faces.png", _contact_sheet([sheet[s] for s in sorted(sheet)]))
    summary = {"photos": len(samples), **{k: counts[k] for k in sorted(counts)}, "crops": len(kept),
               "out": str(out), "size": size, "alignment": alignment.to_dict(),
               "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_json(out / "faces.json", summary)
    return summary


def _prepare_out(out: Path, root: Path) -> Path:
    """A new or empty folder outside the data: nothing is overwritten, and a rerun does not read its output."""
    out, root = out.expanduser().resolve(), root.resolve()
    if out == root or root in out.parents:
        raise FacetlError(f"--out {out} is inside the data folder {root}; choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FacetlError(f"--out {out} already exists and is not empty; choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacetlError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    return out


def _sheet_sample(samples: Samples, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(samples), size=min(SHEET_PHOTOS, len(samples)), replace=False)
    return {samples.paths[i] for i in picked}


def _write_crop(out: Path, relative: str, result: PhotoFaces) -> str | None:
    """Write the photo's used crop at the photo's relative path; return that path (None: no crop)."""
    used = result.used
    if not used:
        return None
    # the training rules (largest | skip | error) leave at most one used face per photo
    name = Path(relative)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(name.suffix.lower())
    if fmt is None:  # other formats become PNG: lossless, and every reader takes it
        name, fmt = name.with_suffix(".png"), "PNG"
    buffer = io.BytesIO()
    Image.fromarray(used[0].crop).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / name, buffer.getvalue())
    return name.as_posix()


def _count(counts: Counter, result: PhotoFaces) -> None:
    if result.error:
        counts["unreadable"] += 1
    elif not result.faces:
        counts["no_face"] += 1
    elif not result.used:
        counts["no_face_used"] += 1
    counts["faces_found"] += len(result.faces)
    for face in result.faces:
        counts["faces_" + face.status.replace(" ", "_")] += 1


def _write_table(table: Path, out: Path, kept: dict[str, str]) -> None:
    """The table's rows for the photos that gave a crop, as a CSV naming the crops, in OUT."""
    names, files, rows = read_table(table)
    body = [[kept[f], *row] for f, row in zip(files, rows) if f in kept]
    atomic_write_csv(out / f"{table.stem}.csv", ["filename", *names], body)


def _contact_sheet(results: list[PhotoFaces], tile: int = 256) -> bytes:
    """A PNG grid: each photo scaled into a tile with its boxes and landmarks, its crops below it."""
    crop_side = tile // 4
    cell = (tile, tile + crop_side + 14)
    columns = 4
    rows = max(1, -(-len(results) // columns))
    sheet = Image.new("RGB", (cell[0] * columns, cell[1] * rows), (255, 255, 255))
    for n, result in enumerate(results):
        left, top = (n % columns) * cell[0], (n // columns) * cell[1]
        sheet.paste(_annotated_tile(result, tile), (left, top))
        crops = [f for f in result.faces if f.crop is not None][:4]
        for k, face in enumerate(crops):
            thumb = Image.fromarray(face.crop).resize((crop_side - 4, crop_side - 4), Image.BILINEAR)
            colour = _USED_COLOUR if face.used else _REJECTED_COLOUR
            framed = Image.new("RGB", (crop_side, crop_side), colour)
            framed.paste(thumb, (2, 2))
            sheet.paste(framed, (left + k * crop_side, top + tile))
        label = f"{Path(result.source).name[:26]}: {result.note}"
        ImageDraw.Draw(sheet).text((left + 2, top + tile + crop_side), label[:42], fill=(0, 0, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG")
    return buffer.getvalue()


def _annotated_tile(result: PhotoFaces, tile: int) -> Image.Image:
    canvas = Image.new("RGB", (tile, tile), (230, 230, 230))
    try:
        photo = Image.fromarray(read_photo(Path(result.source)))
    except UnreadableImage:
        ImageDraw.Draw(canvas).text((4, tile // 2), "unreadable", fill=_REJECTED_COLOUR)
        return canvas
    factor = min(tile / photo.width, tile / photo.height)
    photo = photo.resize((max(1, round(photo.width * factor)), max(1, round(photo.height * factor))), Image.BILINEAR)
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for face in result.faces:
        colour = _USED_COLOUR if face.used else _REJECTED_COLOUR
        x, y, w, h = (v * factor for v in face.face.box)
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=2)
        for px, py in face.face.landmarks * factor:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
    if not result.faces:
        draw.text((4, 4), NO_FACE, fill=_REJECTED_COLOUR)
    return canvas
