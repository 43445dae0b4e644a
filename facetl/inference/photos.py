"""Label photos with a trained run: one row per photo, or one per face found in it.

A run trained on face crops labels each image as a whole, prepared exactly as its training images were.
A run trained with `--faces detect` (or any run, with `--faces detect`) finds every face in each photo,
aligns it as training did (the record's FaceAlignment), and answers once per face; a photo without a
face is a row that says so. `facetl predict` (commands/predict.py) is the command line around this.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facetl.data.faces import faces_in_photos
from facetl.data.folders import find_images
from facetl.data.images import UnreadableImage, decode_image
from facetl.errors import FacetlError
from facetl.inference.classifiers import Classifier
from facetl.inference.tta import with_tta
from facetl.preprocessing import FaceAlignment


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
    alignment = trained or FaceAlignment()
    return dataclasses.replace(alignment, min_face=min_face or alignment.min_face)


@dataclass
class Predictions:
    rows: list[Prediction]                       # one per image, or one per face found
    skipped: list[tuple[str, str]]               # (path, why it could not be read)
    class_names: list[str]
    faces: bool                                  # whether faces were looked for
    multi_attribute: bool = False                # class_names are attributes, each with its own probability


# A photo whose shorter side is at least this many times a crop run's input side is not one of its crops (its
# training images were resized down to that side, and a face crop larger than 4x it is rare): its faces are found
CROP_SIDE_FACTOR = 4


def predict(classifier: Classifier, inputs: list[str], faces: str = "auto",
            min_face: int | None = None, batch_size: int = 64, tta: str = "none") -> Predictions:
    """Every image's rows, in the order given. A run on crops (--faces auto) labels a crop whole and finds the
    faces of a photo clearly larger than its crops (`larger_than_crops`), as serve and a video do; `faces`
    none labels every image whole, detect finds faces in every one. `tta` flip: each image's (or aligned
    face's) probabilities are averaged with its mirror image's."""
    files = collect_images(inputs)
    alignment = face_alignment_for(classifier, faces, min_face)
    if alignment is not None:  # a run on faces, or --faces detect
        crops, photos = [], files
    elif faces == "none":
        crops, photos = files, []
    else:  # auto, with a run on crops
        crops, photos = larger_than_crops(classifier, files)
        alignment = face_alignment_for(classifier, "detect", min_face) if photos else None
    predictions, skipped = _predict_crops(classifier, crops, batch_size, tta)
    if photos:
        found, unread = _predict_faces(classifier, photos, alignment, tta)
        predictions, skipped = (_in_order(files, predictions + found) if crops else found), skipped + unread
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    no_face = [p.path for p in predictions if p.note]
    if no_face:
        print(f"warning: no face found in {len(no_face)} photo(s) (first: {no_face[0]})", file=sys.stderr)
    return Predictions(predictions, skipped, classifier.class_names, alignment is not None,
                       classifier.decision.multi_attribute)


def larger_than_crops(classifier: Classifier, files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(crops, photos) for a run trained on crops: a photo is an image whose shorter side is at least
    CROP_SIDE_FACTOR times the run's input side (read from its header; one that cannot be read stays a crop,
    and says why when it is decoded). Says in one line how many photos had their faces found."""
    side = CROP_SIDE_FACTOR * classifier.preprocessing.size
    crops, photos = [], []
    for path in files:
        (photos if _shorter_side(path) >= side else crops).append(path)
    if photos:
        size = classifier.preprocessing.size
        print(f"{len(photos)} of {len(files)} image(s) are photos, not crops like this run's training images "
              f"(shorter side at least {side} px against its {size}x{size} input): their faces are found and each "
              "labelled, as serve and a video do (--faces none labels the whole photo)", file=sys.stderr)
    return crops, photos


def _shorter_side(path: Path) -> int:
    """From the image's header only; 0 when it is not a regular file or has no readable header."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return 0  # a pipe or a device is read (and refused) once, by the decoder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a huge image's bomb warning: the decoder refuses it in one line
            with Image.open(path) as image:
                return min(image.size)
    except Exception:  # anything Pillow raises on a bad header: the decoder says what is wrong with it
        return 0


def _in_order(files: list[Path], predictions: list[Prediction]) -> list[Prediction]:
    """Rows in the order their images were given (a photo's faces stay in the detector's order)."""
    order = {str(path): i for i, path in enumerate(files)}
    return sorted(predictions, key=lambda p: order.get(p.path, len(order)))


def _labelled(classifier: Classifier, path: str, probs: np.ndarray, **face) -> Prediction:
    """The run's decision, with every class's (or attribute's) probability."""
    label, probability, decided = classifier.decision.label(probs)
    return Prediction(path, label, probability, [float(p) for p in probs], decided=decided, **face)


def _predict_crops(classifier, files: list[Path], batch_size: int, tta: str):
    prep = classifier.preprocessing
    predictions, skipped = [], []
    for start in range(0, len(files), batch_size):
        batch_files, arrays = [], []
        for f in files[start:start + batch_size]:
            try:
                arrays.append(decode_image(f, prep.size, prep.colour)[0])
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
        crops = np.stack([prep.colour_crop(f.crop) for f in used])
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
