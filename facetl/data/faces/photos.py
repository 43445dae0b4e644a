"""From a photo file to its aligned face crops, with a verdict for every face found.

This is the one place where a FaceAlignment record is applied: training (`--faces detect`), `facetl
faces` and prediction all call `faces_in_photo` / `faces_in_photos`, so a photo is cut into crops the
same way everywhere. Every face the detector reports is listed with its status (used, too small, low
score, not the largest, ...), so nothing is dropped without saying so.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from facetl.data.faces.align import TEMPLATES, align_face
from facetl.data.faces.detect import LANDMARKS, DetectedFace, FaceDetector, create_detector, detector_names
from facetl.data.faces.refine import refine_landmarks
from facetl.data.images import MAX_PIXELS, UnreadableImage, read_photo
from facetl.errors import FacetlError
from facetl.preprocessing import LANDMARK_SOURCES, FaceAlignment

# What to do with a photo holding several usable faces. "all" is for prediction, which answers per face;
# the others are the training rules of FaceAlignment.multi_face.
MULTI_FACE_RULES = ("largest", "skip", "error", "all")

USED = "used"
TOO_SMALL = "too small"
LOW_SCORE = "low score"
NOT_LARGEST = "not largest"
SEVERAL_FACES = "several faces"
NO_FACE = "no face"

# faces.csv, written by `facetl faces` and by training with --faces detect: every face found, or a row
# saying why a photo has none
FACES_CSV_HEADER = (["source", "face", "x", "y", "w", "h", "score"]
                    + [f"{name}_{axis}" for name in LANDMARKS for axis in "xy"] + ["status", "crop"])

_READ_AHEAD = 16  # photos decoded per detector call in faces_in_photos: enough to fill a batch


@dataclass(frozen=True)
class PhotoFace:
    index: int                      # 0 = the detector's most confident face in the photo
    face: DetectedFace
    status: str                     # USED, TOO_SMALL, LOW_SCORE, NOT_LARGEST or SEVERAL_FACES
    crop: np.ndarray | None         # (size, size, 3) uint8; None for faces too small or low score

    @property
    def used(self) -> bool:
        return self.status == USED


@dataclass(frozen=True)
class PhotoFaces:
    source: str                     # the path as given (or a name for an in-memory photo)
    width: int = 0
    height: int = 0
    faces: list[PhotoFace] = field(default_factory=list)
    error: str | None = None        # why the file could not be read; then there are no faces

    @property
    def used(self) -> list[PhotoFace]:
        return [f for f in self.faces if f.used]

    @property
    def note(self) -> str:
        """One phrase for the photo as a whole, for logs and tables."""
        if self.error:
            return f"unreadable: {self.error}"
        if not self.faces:
            return NO_FACE
        used = len(self.used)
        return f"{used} of {len(self.faces)} faces used" if used else f"no face used ({len(self.faces)} found)"


def check_alignment(alignment: FaceAlignment, multi_face: str | None = None) -> None:
    """Every bad value of the record at once, as one FacetlError line."""
    problems = []
    if alignment.detector not in detector_names():
        problems.append(f"detector {alignment.detector!r} (valid: {', '.join(detector_names())})")
    if alignment.template not in TEMPLATES:
        problems.append(f"template {alignment.template!r} (valid: {', '.join(sorted(TEMPLATES))})")
    rule = multi_face or alignment.multi_face
    if rule not in MULTI_FACE_RULES:
        problems.append(f"multi-face rule {rule!r} (valid: {', '.join(MULTI_FACE_RULES)})")
    if alignment.landmarks not in LANDMARK_SOURCES:
        problems.append(f"landmarks {alignment.landmarks!r} (valid: {', '.join(LANDMARK_SOURCES)})")
    if not 0.1 <= alignment.scale <= 4.0:
        problems.append(f"scale {alignment.scale} (between 0.1 and 4)")
    if alignment.min_face < 1:
        problems.append(f"min_face {alignment.min_face} (at least 1 pixel)")
    if not 0.0 <= alignment.min_score <= 1.0:
        problems.append(f"min_score {alignment.min_score} (between 0 and 1)")
    if alignment.detect_side < 64:
        problems.append(f"detect_side {alignment.detect_side} (at least 64 pixels)")
    if problems:
        raise FacetlError("bad face alignment settings: " + "; ".join(problems))


def detector_for(alignment: FaceAlignment) -> FaceDetector:
    check_alignment(alignment)
    return create_detector(alignment.detector, alignment.detect_side)


def faces_in_photo(photo: str | Path | np.ndarray, alignment: FaceAlignment, size: int,
                   multi_face: str | None = None, detector: FaceDetector | None = None) -> PhotoFaces:
    """Detect, judge and align every face of one photo (a file or an HxWx3 uint8 RGB array).

    `multi_face` overrides alignment.multi_face ("all" for prediction). An unreadable file raises
    UnreadableImage; under the "error" rule, several usable faces raise FacetlError."""
    check_alignment(alignment, multi_face)
    detector = detector or detector_for(alignment)
    source, pixels = _load(photo)
    return _judge(source, pixels, detector.detect([pixels], alignment.min_face)[0], alignment, size,
                  multi_face or alignment.multi_face, detector)


def faces_in_photos(paths: Iterable[str | Path], alignment: FaceAlignment, size: int,
                    multi_face: str | None = None, detector: FaceDetector | None = None,
                    max_pixels: int = MAX_PIXELS) -> Iterator[PhotoFaces]:
    """`faces_in_photo` for many files, in order, batching photos of one size through the detector.

    An unreadable file is a PhotoFaces with `error` set, not an exception, so one bad file does not
    stop a folder."""
    check_alignment(alignment, multi_face)
    detector = detector or detector_for(alignment)
    rule = multi_face or alignment.multi_face
    chunk: list[tuple[str, np.ndarray | str]] = []
    for path in paths:
        chunk.append(_try_read(path, max_pixels))
        if len(chunk) == _READ_AHEAD:
            yield from _detect_chunk(chunk, detector, alignment, size, rule)
            chunk = []
    yield from _detect_chunk(chunk, detector, alignment, size, rule)


def _detect_chunk(chunk: Sequence[tuple[str, np.ndarray | str]], detector: FaceDetector,
                  alignment: FaceAlignment, size: int, rule: str) -> Iterator[PhotoFaces]:
    readable = [pixels for _, pixels in chunk if isinstance(pixels, np.ndarray)]
    found = iter(detector.detect(readable, alignment.min_face) if readable else [])
    for source, pixels in chunk:
        if isinstance(pixels, str):
            yield PhotoFaces(source, error=pixels)
        else:
            yield _judge(source, pixels, next(found), alignment, size, rule, detector)


def faces_of_frame(source: str, pixels: np.ndarray, found: list[DetectedFace], alignment: FaceAlignment,
                   size: int, detector: FaceDetector, multi_face: str = "all") -> PhotoFaces:
    """Judge and align the faces a detector already found in one decoded picture (a video's frame, whose
    detection was batched with its neighbours'): the same verdicts and crops as `faces_in_photo`."""
    return _judge(source, pixels, found, alignment, size, multi_face, detector)


def _try_read(path: str | Path, max_pixels: int) -> tuple[str, np.ndarray | str]:
    try:
        return str(path), read_photo(Path(path), max_pixels)
    except UnreadableImage as exc:
        return str(path), str(exc)


def _load(photo: str | Path | np.ndarray) -> tuple[str, np.ndarray]:
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise FacetlError(f"a photo array must be HxWx3 uint8 RGB, not {photo.shape} {photo.dtype}")
        return "<array>", photo
    return str(photo), read_photo(Path(photo))


def _judge(source: str, pixels: np.ndarray, found: list[DetectedFace], alignment: FaceAlignment, size: int,
           rule: str, detector: FaceDetector) -> PhotoFaces:
    statuses = _statuses(found, alignment, rule, source)
    image = Image.fromarray(pixels)  # one PIL image for all the face warps of this photo
    cut = [i for i, status in enumerate(statuses) if status not in (TOO_SMALL, LOW_SCORE)]
    found = list(found)
    for i, face in zip(cut, aligned_landmarks(image, [found[i] for i in cut], alignment, detector)):
        found[i] = face
    faces = []
    for index, (face, status) in enumerate(zip(found, statuses)):
        crop = None
        if index in cut:
            crop = align_face(image, face.landmarks, size, alignment.template, alignment.scale, face.box)
        faces.append(PhotoFace(index, face, status, crop))
    return PhotoFaces(source, pixels.shape[1], pixels.shape[0], faces)


def aligned_landmarks(image: Image.Image, faces: Sequence[DetectedFace], alignment: FaceAlignment,
                      detector: FaceDetector) -> list[DetectedFace]:
    """The faces with the landmarks their crops are aligned with: the detector's, or refined (refine.py).
    These are the landmarks faces.csv and predictions report."""
    if alignment.landmarks == "detector" or not faces:
        return list(faces)
    refined = refine_landmarks(image, [f.landmarks for f in faces], detector)
    return [dataclasses.replace(face, landmarks=marks) for face, marks in zip(faces, refined)]


def _statuses(found: Sequence[DetectedFace], alignment: FaceAlignment, rule: str, source: str) -> list[str]:
    """USED or why not, per face: size and score first, then the multi-face rule on what is left."""
    statuses = [TOO_SMALL if f.side < alignment.min_face else LOW_SCORE if f.score < alignment.min_score
                else USED for f in found]
    usable = [i for i, s in enumerate(statuses) if s == USED]
    if len(usable) < 2 or rule == "all":
        return statuses
    if rule == "error":
        raise FacetlError(f"{source}: {len(usable)} faces found and the multi-face rule is 'error' "
                          "(use --multi-face largest or skip)")
    largest = max(usable, key=lambda i: found[i].area)
    for i in usable:
        if rule == "skip":
            statuses[i] = SEVERAL_FACES
        elif i != largest:
            statuses[i] = NOT_LARGEST
    return statuses


def face_rows(relative: str, result: PhotoFaces, crop_name: str | None = None) -> list[list]:
    """The faces.csv rows of one photo (FACES_CSV_HEADER)."""
    if not result.faces:
        return [[relative, "", "", "", "", "", ""] + [""] * 10 + [result.note, ""]]
    rows = []
    for face in result.faces:
        x, y, w, h = face.face.box
        marks = [f"{v:.1f}" for v in face.face.landmarks.ravel()]
        rows.append([relative, face.index, f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}", f"{face.face.score:.4f}",
                     *marks, face.status, crop_name if face.used else ""])
    return rows
