"""Cut a dataset of whole photos into a dataset of aligned face crops, and show how (what `facetl faces` does).

The output has the input's layout (class folders keep their relative paths; a table's crops keep their
file names, with a copy of the table listing only the photos that gave a crop), so it trains like any
crop dataset. Next to the crops: `faces.csv` (every face found, with box, score, landmarks, and used or
why not; photos without a face are rows that say so), `faces.png` (a contact sheet of sampled photos with
their boxes and landmarks, used faces green and rejected ones red, and their aligned crops) and
`faces.json` (the counts and the settings).

Crops are written only inside OUT, whatever the data names (outputs.py): an absolute table row or one with
`..` is read where it points and its crop goes under OUT/_root or OUT/_up; a crop that is neither JPEG nor
PNG keeps its extension in its name (`x.gif.png`), so no two photos share a crop. While it works, OUT holds
`faces.unfinished.json` (what is being cut) and `faces.unfinished.csv` (the faces.csv rows of every photo
done, one photo at a time): a killed or interrupted run, rerun the same way, goes on from there.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw

from facetl.data.faces import FACES_CSV_HEADER, NO_FACE, PhotoFaces, detector_for, face_rows, faces_in_photos
from facetl.data.images import UnreadableImage, read_photo
from facetl.data.load import load_samples
from facetl.data.samples import Samples
from facetl.data.spec import DataSpec
from facetl.data.tables import read_table
from facetl.errors import FacetlError
from facetl.outputs import contained_name, inside, refuse_misplaced, unique_names
from facetl.preprocessing import FaceAlignment
from facetl.progress import progress_bar
from facetl.runfolder import RunLock, atomic_write_bytes, atomic_write_csv, atomic_write_json, csv_text, plain_cell

SHEET_PHOTOS = 12
_USED_COLOUR, _REJECTED_COLOUR = (40, 220, 60), (235, 40, 40)
PLAN, JOURNAL = "faces.unfinished.json", "faces.unfinished.csv"
OUTPUT_FILES = ("faces.csv", "faces.png", "faces.json", PLAN, JOURNAL, ".lock")
CROP_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
_STATUS = FACES_CSV_HEADER.index("status")


def extract_faces(source: DataSpec, out: str | Path, alignment: FaceAlignment = FaceAlignment(), size: int = 112,
                  progress: bool = True, seed: int = 0) -> dict:
    """Detect and align the faces of every photo of `source` (its data, images and target) into OUT; return the
    counts written to faces.json."""
    start = time.perf_counter()
    data, images, target = source.data, source.images, source.target
    samples = load_samples(str(data), str(images) if images else None, target)
    table_copy = _table_copy_name(Path(data)) if target else None
    names = crop_names(samples.paths, [*OUTPUT_FILES, *([table_copy] if table_copy else [])])
    plan = _plan(data, images, target, alignment, size, samples)
    out = _open_out(Path(out), samples.root)
    with RunLock(out):
        done = _resume_or_begin(out, plan)
        cut = _Cutting(samples, names, out, alignment, size, detector_for(alignment))
        sheet_sources = _sheet_sample(samples, seed)
        sheet = _detect_all(cut, done, sheet_sources, progress)
        missing = sorted(sheet_sources - set(sheet))  # sampled photos done by an earlier, interrupted run
        sheet.update(zip(missing, cut.faces([samples.root / p for p in missing])))
        rows = [row for p in samples.paths for row in done[p]]
        if table_copy:
            _write_table(Path(data), out / table_copy, _crops(done))
        atomic_write_csv(out / "faces.csv", FACES_CSV_HEADER, rows)
        atomic_write_bytes(out / "faces.png", _contact_sheet([sheet[s] for s in sorted(sheet)]))
        counts = _counts(done.values())
        summary = {"photos": len(samples), **{k: counts[k] for k in sorted(counts)}, "crops": len(_crops(done)),
                   "out": str(out), "size": size, "alignment": alignment.to_dict(),
                   "seconds": round(time.perf_counter() - start, 1)}
        atomic_write_json(out / "faces.json", summary)
        (out / JOURNAL).unlink(missing_ok=True)
        (out / PLAN).unlink(missing_ok=True)  # last: until now, a rerun finishes the job
    return summary


def crop_names(paths: list[str], reserved: list[str]) -> list[str]:
    """Each photo's crop name inside OUT: its relative path, made safe (outputs.contained_name); a format other
    than JPEG or PNG is written as PNG with the original extension kept (x.gif -> x.gif.png); then distinct
    from each other and from OUT's own files."""
    wanted = []
    for path in paths:
        name = contained_name(path)
        wanted.append(name if PurePosixPath(name).suffix.lower() in CROP_FORMATS else name + ".png")
    return unique_names(wanted, reserved)


def _table_copy_name(table: Path) -> str:
    name = f"{table.stem}.csv"
    return f"{table.stem}-table.csv" if name.casefold() in {f.casefold() for f in OUTPUT_FILES} else name


def _plan(data, images, target, alignment: FaceAlignment, size: int, samples: Samples) -> dict:
    """What a run cuts: a rerun into an unfinished OUT continues only when this is the same."""
    listing = hashlib.sha256("\n".join(samples.paths).encode("utf-8", "surrogatepass")).hexdigest()
    return {"command": "facetl faces", "data": str(Path(data).expanduser().resolve()),
            "images": str(Path(images).expanduser().resolve()) if images else None, "target": target,
            "size": size, "alignment": alignment.to_dict(), "photos": len(samples), "photo_list_sha256": listing}


def _open_out(out: Path, root: Path) -> Path:
    """OUT made, outside the data (a rerun must not read its output); a folder holding anything but an
    unfinished run's files is refused before anything is written."""
    out = out.expanduser().resolve()
    refuse_misplaced(out, "--out", [("data folder", root)])
    if out.exists() and not out.is_dir():
        raise FacetlError(f"--out {out} exists and is not a folder; choose a new or empty folder")
    if out.is_dir() and not (out / PLAN).is_file() and any(p.name != ".lock" for p in out.iterdir()):
        raise FacetlError(f"--out {out} already exists and is not empty; choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacetlError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    return out


def _resume_or_begin(out: Path, plan: dict) -> dict[str, list[list]]:
    """The faces.csv rows of the photos an earlier run of the same plan finished (none for a new OUT)."""
    if not (out / PLAN).is_file():
        if any(p.name != ".lock" for p in out.iterdir()):  # filled while we waited for the lock
            raise FacetlError(f"--out {out} already exists and is not empty; choose a new or empty folder")
        atomic_write_json(out / PLAN, plan)
        atomic_write_bytes(out / JOURNAL, csv_text(FACES_CSV_HEADER, []).encode("utf-8"))
        return {}
    try:
        earlier = json.loads((out / PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FacetlError(f"{out / PLAN} cannot be read ({exc}); choose a new --out folder") from None
    changed = [key for key in plan if earlier.get(key) != plan[key]] if isinstance(earlier, dict) else ["all"]
    if changed:
        raise FacetlError(f"--out {out} holds an unfinished `facetl faces` of other data or settings ("
                          f"{', '.join(changed)} differ); rerun the command that began it, or choose a new folder")
    done = _read_journal(out / JOURNAL)
    # the journal again as only what is kept, so the photo done again is not listed twice
    rows = [row for photo in done.values() for row in photo]
    atomic_write_bytes(out / JOURNAL, csv_text(FACES_CSV_HEADER, rows).encode("utf-8"))
    return done


def _read_journal(path: Path) -> dict[str, list[list]]:
    """The journal's rows by photo, less the last photo's: its rows may be cut short, so it is done again."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise FacetlError(f"{path} cannot be read ({exc}); choose a new --out folder") from None
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # a line cut off by a kill
    done: dict[str, list[list]] = {}
    for row in ([plain_cell(c) for c in r] for r in list(csv.reader(io.StringIO(text)))[1:]):
        if len(row) == len(FACES_CSV_HEADER):
            done.setdefault(row[0], []).append(row)
    if done:
        done.pop(next(reversed(done)))
    return done


@dataclass(frozen=True)
class _Cutting:
    """One run of `facetl faces`: its photos, their crops' names, OUT, and how faces are found and cut."""
    samples: Samples
    names: list[str]              # each photo's crop name inside OUT (crop_names)
    out: Path
    alignment: FaceAlignment
    size: int                     # the crops' side in pixels
    detector: object

    def faces(self, photos: list[Path]) -> list[PhotoFaces]:
        return faces_in_photos(photos, self.alignment, self.size, detector=self.detector)


def _detect_all(cut: _Cutting, done: dict[str, list[list]], sheet_sources: set[str],
                progress: bool) -> dict[str, PhotoFaces]:
    """Every photo not done yet: its crop, then its rows in the journal (and in `done`); return the
    sampled photos' results for the contact sheet."""
    samples, names, out = cut.samples, cut.names, cut.out
    todo = [i for i, p in enumerate(samples.paths) if p not in done]
    results = cut.faces([samples.root / samples.paths[i] for i in todo])
    sheet = {}
    with open(out / JOURNAL, "a", encoding="utf-8", newline="") as journal:
        for i, result in progress_bar(zip(todo, results), total=len(todo), unit="photo", desc="faces",
                                      enabled=progress, leave=True):
            relative = samples.paths[i]
            rows = face_rows(relative, result, _write_crop(out, names[i], result))
            journal.write(csv_text(None, rows))
            journal.flush()
            done[relative] = rows
            if relative in sheet_sources:
                sheet[relative] = result
    return sheet


def _crops(done: dict[str, list[list]]) -> dict[str, str]:
    """photo -> its crop's name, for the photos that gave one."""
    return {source: row[-1] for source, rows in done.items() for row in rows if row[_STATUS] == "used" and row[-1]}


def _counts(photos) -> Counter:
    """faces.json's counts, from the faces.csv rows of each photo (those of an earlier run included)."""
    counts = Counter(faces_found=0)
    for rows in photos:
        if rows[0][1] == "":  # no face column: the photo's one row says why
            counts["unreadable" if str(rows[0][_STATUS]).startswith("unreadable") else "no_face"] += 1
            continue
        counts["faces_found"] += len(rows)
        for row in rows:
            counts["faces_" + str(row[_STATUS]).replace(" ", "_")] += 1
        if not any(row[_STATUS] == "used" for row in rows):
            counts["no_face_used"] += 1
    return counts


def _sheet_sample(samples: Samples, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(samples), size=min(SHEET_PHOTOS, len(samples)), replace=False)
    return {samples.paths[i] for i in picked}


def _write_crop(out: Path, name: str, result: PhotoFaces) -> str | None:
    """Write the photo's used crop as OUT/name; return the name (None: no crop)."""
    used = result.used
    if not used:
        return None
    # the training rules (largest | skip | error) leave at most one used face per photo
    fmt = CROP_FORMATS.get(PurePosixPath(name).suffix.lower(), "PNG")
    buffer = io.BytesIO()
    Image.fromarray(used[0].crop).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    target = inside(out, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return name


def _write_table(table: Path, target: Path, kept: dict[str, str]) -> None:
    """The table's rows for the photos that gave a crop, as a CSV naming the crops, in OUT."""
    names, files, rows = read_table(table)
    body, seen = [], set()
    for f, row in zip(files, rows):
        if f in kept and f not in seen:  # a file listed twice was cut once (its first row, as training reads it)
            seen.add(f)
            body.append([kept[f], *row])
    atomic_write_csv(target, ["filename", *names], body)


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
