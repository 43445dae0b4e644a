"""Label new photos with a trained run: `facetl predict RUN IMAGE_OR_FOLDER...`.

A run trained on face crops labels each image as a whole, prepared exactly as its training images were.
A run trained with `--faces detect` (or any run, with `--faces detect`) finds every face in each photo,
aligns it as training did (the record's FaceAlignment), and answers once per face; a photo without a
face is a row that says so.
"""
from __future__ import annotations

import dataclasses
import io
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facetl.data.faces import faces_in_photos
from facetl.data.folders import find_images
from facetl.data.images import UnreadableImage, decode_image, read_photo
from facetl.data.store import recut_crop
from facetl.errors import FacetlError
from facetl.inference.classifiers import Classifier
from facetl.inference.video import crop_colour
from facetl.outputs import inside, mirrored_names, unique_names
from facetl.preprocessing import FaceAlignment
from facetl.runfolder import atomic_write_bytes
from facetl.inference.tta import with_tta


@dataclass
class Prediction:
    path: str
    label: str                                   # "" when the photo has no face
    probability: float | None                    # of `label`
    probs: list[float] | None = None             # every class's, in the run's class order
    face: int | None = None                      # face number in the photo (face runs only)
    box: tuple[float, float, float, float] | None = None
    score: float | None = None                   # the detector's confidence
    decided: list[int] | None = None             # multi-attribute: 0/1 per attribute, by the run's thresholds
    note: str = ""


def collect_images(inputs: list[str]) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise FacetlError(f"no images found in folder {path}")
            files.extend(found)
        elif path.exists():  # a file; anything else (a pipe, a device) is skipped with a warning when read
            files.append(path)
        else:
            raise FacetlError(f"image or folder not found: {path}")
    return once_each(files, follow_links=False)


def once_each(files: list[Path], follow_links: bool = True) -> list[Path]:
    """Each photo or video once, in the order first given: a file named twice (directly, through a folder or
    `./`) would give its rows twice (and a video tracks longer than itself). Says which were repeated. A photo
    reached through a link under another name keeps its own row (`follow_links=False`): the CSV names both."""
    first: dict[str, Path] = {}
    repeated: dict[str, int] = {}
    for path in files:
        key = os.path.realpath(path) if follow_links else os.path.abspath(path)
        if key in first:
            repeated[key] = repeated.get(key, 1) + 1
        else:
            first[key] = path
    for key, times in repeated.items():
        print(f"{first[key]} given more than once ({times} times); it is read once")
    return list(first.values())


def face_alignment_for(classifier, faces: str, min_face: int | None) -> FaceAlignment | None:
    """auto: what the run was trained with; detect: find faces even in a run trained on crops; none: never."""
    trained = classifier.preprocessing.faces
    if faces == "none" or (faces == "auto" and trained is None):
        return None
    alignment = classifier.preprocessing.photo_faces()  # a run on crops: cut as its backbone's weights expect
    return dataclasses.replace(alignment, min_face=min_face or alignment.min_face)


@dataclass
class Predictions:
    rows: list[Prediction]                       # one per image, or one per face found
    skipped: list[tuple[str, str]]               # (path, why it could not be read)
    class_names: list[str]
    faces: bool                                  # whether faces were looked for
    multi_attribute: bool = False                # class_names are attributes, each with its own probability


def predict(classifier: Classifier, inputs: list[str], faces: str = "auto",
            min_face: int | None = None, batch_size: int = 64, tta: str = "none") -> Predictions:
    """`tta` flip: each image's (or aligned face's) probabilities are averaged with its mirror image's."""
    files = collect_images(inputs)
    alignment = face_alignment_for(classifier, faces, min_face)
    if alignment is None:
        predictions, skipped = _predict_crops(classifier, files, batch_size, tta)
    else:
        predictions, skipped = _predict_faces(classifier, files, alignment, tta)
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    no_face = [p.path for p in predictions if p.note]
    if no_face:
        print(f"warning: no face found in {len(no_face)} photo(s) (first: {no_face[0]})", file=sys.stderr)
    return Predictions(predictions, skipped, classifier.class_names, alignment is not None,
                       classifier.decision.multi_attribute)


def _labelled(classifier: Classifier, path: str, probs: np.ndarray, **face) -> Prediction:
    """The run's decision, with every class's (or attribute's) probability."""
    label, probability, decided = classifier.decision.label(probs)
    return Prediction(path, label, probability, [float(p) for p in probs], decided=decided, **face)


def _predict_crops(classifier, files: list[Path], batch_size: int, tta: str):
    prep = classifier.preprocessing
    recut = recut_crop(prep.recut, prep.size)
    predictions, skipped = [], []
    for start in range(0, len(files), batch_size):
        batch_files, arrays = [], []
        for f in files[start:start + batch_size]:
            try:
                arrays.append(decode_image(f, prep.size, prep.colour, recut)[0])
                batch_files.append(f)
            except UnreadableImage as exc:
                skipped.append((str(f), str(exc)))
        if arrays:
            probs = with_tta(classifier.classify, np.stack(arrays), tta)
            predictions += [_labelled(classifier, str(f), p) for f, p in zip(batch_files, probs)]
    return predictions, skipped


def _predict_faces(classifier, files: list[Path], alignment: FaceAlignment, tta: str):
    prep = classifier.preprocessing
    predictions, skipped = [], []
    for result in faces_in_photos(files, alignment, prep.size, multi_face="all"):
        if result.error:
            skipped.append((result.source, result.error))
            continue
        used = result.used
        if not used:
            predictions.append(Prediction(result.source, "", None, note=result.note))
            continue
        crops = np.stack([crop_colour(f.crop, prep.colour) for f in used])
        for face, probs in zip(used, with_tta(classifier.classify, crops, tta)):  # the aligned crop is mirrored
            predictions.append(_labelled(classifier, result.source, probs, face=face.index,
                                         box=face.face.box, score=face.face.score))
    return predictions, skipped


def prediction_table(result: Predictions) -> tuple[list[str], list[list]]:
    """CSV header and rows: the face columns only when faces were looked for, and every class's probability;
    multi-attribute, per attribute its probability and the run's 0/1 (by that attribute's threshold)."""
    if result.multi_attribute:
        return _attribute_table(result)
    classes = len(result.class_names)
    header = ["path"] + (FACE_COLUMNS if result.faces else []) + [
        "label", "probability"] + [f"p_{name}" for name in result.class_names]
    rows = []
    for p in result.rows:
        face = _face_cells(p) if result.faces else []
        probability = "" if p.probability is None else f"{p.probability:.6f}"
        probs = [f"{q:.6f}" for q in p.probs] if p.probs else [""] * classes
        rows.append([p.path, *face, p.label or p.note, probability, *probs])
    return header, rows


FACE_COLUMNS = ["face", "x", "y", "w", "h", "detection_score"]


def _face_cells(p) -> list:
    """A prediction's FACE_COLUMNS: which face, its box and its detection score (empty where none was found)."""
    box = [f"{v:.1f}" for v in p.box] if p.box else ["", "", "", ""]
    return ["" if p.face is None else p.face, *box, "" if p.score is None else f"{p.score:.4f}"]


def _attribute_table(result: Predictions) -> tuple[list[str], list[list]]:
    names = result.class_names
    header = ["path"] + (FACE_COLUMNS if result.faces else []) + ["label"] + [
        f"p_{n}" for n in names] + list(names)
    rows = []
    for p in result.rows:
        face = _face_cells(p) if result.faces else []
        probs = [f"{q:.6f}" for q in p.probs] if p.probs else [""] * len(names)
        rows.append([p.path, *face, p.label or p.note, *probs, *(p.decided or [""] * len(names))])
    return header, rows


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
        draw.rectangle((x, top, x + box[2] - box[0] + 6, top + box[3] - box[1] + 4), fill=(40, 220, 60))
        draw.text((x + 3, top + 1 - box[1] + y), text, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def check_csv_out(out: Path, overwrite: bool) -> None:
    """Refuse before any work (after facetl.outputs.refuse_misplaced, the rule for where any output may go): an
    existing file only when asked, and a CSV that could not be written is said now, not after the predictions."""
    if out.is_dir():
        raise FacetlError(f"--out {out} is a folder; give the CSV file's name (e.g. {out / 'predictions.csv'})")
    if out.exists() and not overwrite:
        raise FacetlError(f"--out {out} exists; pass --overwrite to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise FacetlError(f"--out {out}: its folder {folder} does not exist; create it or choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FacetlError(f"--out {out}: its folder {folder} is not writable; choose another --out")
