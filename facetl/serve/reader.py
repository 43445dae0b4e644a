"""One photo in, every face with every run's answer out: detection once, then each run's own crop.

Serving always works on whole photos, as `facetl predict --faces detect` does: a run trained on faces
found in photos cuts them with its recorded FaceAlignment, a run trained on crops with the default one
(`face_alignment_for`). Faces are found once per photo, with the most permissive `min_face` and
`min_score` among the runs, then each run aligns every face as its own record says (landmarks, template,
scale, size) and answers; runs whose records cut the same crop share it. A run whose answer is not a
number (NaN or infinite, from broken weights) fails the photo with NonFiniteAnswer naming it, rather than
answering a probability of null.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facetl.data.faces import LANDMARKS, PhotoFace, align_face, aligned_landmarks, detector_for, faces_in_photo
from facetl.data.faces.composite import background
from facetl.data.images import MAX_PIXELS, photo_from_bytes
from facetl.errors import NotANumber
from facetl.inference.photos import face_alignment_for
from facetl.preprocessing import FaceAlignment
from facetl.serve.runs import ServedRun


class NonFiniteAnswer(Exception):
    """A run answered with a probability that is not a finite number."""

    def __init__(self, run: str):
        super().__init__(f"run '{run}' answered with a probability that is not a number (NaN or infinite): "
                         "its model is broken (check or retrain it; serve the other runs without it)")
        self.run = run


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class RunAnswer:
    label: str
    probability: float                      # of `label`
    probabilities: dict[str, float]         # every class's, in the run's class order


@dataclass(frozen=True)
class FaceAnswer:
    index: int                              # 0 = the detector's most confident face
    box: Box                                # in pixels of the upright photo
    score: float                            # the detector's confidence
    landmarks: dict[str, list[float]]       # left_eye, right_eye, nose, mouth_left, mouth_right: [x, y]
    runs: dict[str, RunAnswer]              # by run name, every run served


@dataclass(frozen=True)
class SkippedFace:
    box: Box
    score: float
    why: str                                # too small | low score


@dataclass
class PhotoAnswer:
    width: int                              # of the upright photo (EXIF rotation applied)
    height: int
    faces: list[FaceAnswer]
    skipped: list[SkippedFace]              # found but not answered, and why
    milliseconds: dict[str, float]          # detect, classify; decode and queue when served


# FaceAlignment settings that decide which faces are found, not how a found face is cut: serving finds
# faces once for every run, with these taken from the first run (min_face, min_score: the runs' lowest)
_DETECTION_SETTINGS = ("detector", "detect_side", "min_face", "min_score", "multi_face")


class PhotoReader:
    """Holds the detector and the classifiers. Not thread-safe (MTCNN's settings are per call, torch's
    thread count is process-wide): the server calls it from one worker thread only."""

    def __init__(self, runs: list[ServedRun], min_face: int | None = None):
        self.runs = runs
        self.alignments = [face_alignment_for(r.classifier, "detect", min_face) for r in runs]
        # runs that disagree on the landmarks: faces are found with the detector's, each run's made from them
        landmarks = {a.landmarks for a in self.alignments}
        self.detection = dataclasses.replace(self.alignments[0],
                                             min_face=min(a.min_face for a in self.alignments),
                                             min_score=min(a.min_score for a in self.alignments),
                                             landmarks=landmarks.pop() if len(landmarks) == 1 else "detector")
        self.detector = detector_for(self.detection)

    def warm_up(self) -> None:
        """A blank photo through the detector and a blank face through every classifier, so the first
        request does not pay for lazy start-up."""
        self.read(background(320, 240))
        for run in self.runs:
            size = run.classifier.preprocessing.size
            try:
                run.classifier.classify(np.zeros((1, size, size, 3), dtype=np.uint8))
            except NotANumber:
                pass  # a broken run is served as one: each photo's answer is a 500 naming it

    def read_bytes(self, data: bytes, max_pixels: int = MAX_PIXELS) -> PhotoAnswer:
        """An uploaded file: UnreadableImage when it cannot be decoded."""
        start = time.perf_counter()
        pixels = photo_from_bytes(data, max_pixels)
        decoded = time.perf_counter()
        answer = self.read(pixels)
        answer.milliseconds["decode"] = _ms(start, decoded)
        return answer

    def read(self, pixels: np.ndarray) -> PhotoAnswer:
        start = time.perf_counter()
        first = self.runs[0].classifier.preprocessing.size
        found = faces_in_photo(pixels, self.detection, first, multi_face="all", detector=self.detector)
        used = found.used
        detected = time.perf_counter()
        answers: list[dict[str, RunAnswer]] = [{} for _ in used]
        # the faces' landmarks by source, and their crops by everything that shapes a crop: each made once
        marks = {self.detection.landmarks: [face.face.landmarks for face in used]}
        cuts = {self._cut(self.detection, first): [face.crop for face in used]}
        if used:
            image = Image.fromarray(pixels)  # one PIL image for every run's warps
            for run, alignment in zip(self.runs, self.alignments):
                size = run.classifier.preprocessing.size
                if alignment.landmarks not in marks:
                    marks[alignment.landmarks] = [face.landmarks for face in aligned_landmarks(
                        image, [face.face for face in used], alignment, self.detector)]
                cut = self._cut(alignment, size)
                if cut not in cuts:
                    cuts[cut] = [align_face(image, points, size, alignment.template, alignment.scale, face.face.box)
                                 for face, points in zip(used, marks[alignment.landmarks])]
                crops = np.stack([run.classifier.preprocessing.colour_crop(crop) for crop in cuts[cut]])
                try:
                    outputs = run.classifier.classify(crops)  # refuses NaN or inf itself (NotANumber)
                except NotANumber:
                    raise NonFiniteAnswer(run.name) from None
                for answer, probs in zip(answers, outputs):
                    answer[run.name] = run_answer(run.classifier, probs)
        classified = time.perf_counter()
        shown = marks.get(self.alignments[0].landmarks, marks[self.detection.landmarks])  # the first run's
        faces = [FaceAnswer(face.index, _box(face), round(face.face.score, 4), _landmarks(points), runs)
                 for face, points, runs in zip(used, shown, answers)]
        skipped = [SkippedFace(_box(face), round(face.face.score, 4), face.status)
                   for face in found.faces if not face.used]
        return PhotoAnswer(found.width, found.height, faces, skipped,
                           {"detect": _ms(start, detected), "classify": _ms(detected, classified)})

    def _cut(self, alignment: FaceAlignment, size: int) -> tuple[int, FaceAlignment]:
        """What a crop depends on: the size and the whole record, less the settings of the one detection
        all runs share (so a field added to FaceAlignment later keeps crops apart by default)."""
        shared = {name: getattr(self.detection, name) for name in _DETECTION_SETTINGS}
        return size, dataclasses.replace(alignment, **shared)


def run_answer(classifier, probs: np.ndarray) -> RunAnswer:
    """The run's decision (its threshold for two classes), as predict makes it."""
    class_names = classifier.class_names
    label, probability, _ = classifier.decision.label(probs)
    return RunAnswer(label, round(probability, 6),
                     {name: round(float(p), 6) for name, p in zip(class_names, probs)})


def _box(face: PhotoFace) -> Box:
    return Box(*(round(float(v), 1) for v in face.face.box))


def _landmarks(points: np.ndarray) -> dict[str, list[float]]:
    return {name: [round(float(v), 1) for v in point] for name, point in zip(LANDMARKS, points)}


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 1)
