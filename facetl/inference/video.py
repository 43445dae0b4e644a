"""Faces in moving pictures: a batch of frames in, every face tracked and labelled (raw and smoothed) out.

`FramePipeline` is the reusable part of `facetl predict` on a video (and of anything else that sees frames,
such as a camera): the frames of a batch go through the detector together (MTCNN takes batches of
same-size pictures, searched on a copy at most `FaceAlignment.detect_side` long), each face is judged and
aligned exactly as a photo's (data/faces: the run's FaceAlignment and Preprocessing), all the faces of the
batch are classified in one forward pass, then each frame's faces are matched to tracks (`FaceTracker`) and
each track's probabilities smoothed over time (`ProbabilitySmoother`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from facetl.data.faces import check_alignment, create_detector, faces_of_frame
from facetl.data.faces.detect import torch_threads
from facetl.inference.classifiers import Classifier
from facetl.inference.reid import DlibEmbedder, FaceReID
from facetl.inference.tta import with_tta
from facetl.preprocessing import FaceAlignment


@dataclass(frozen=True)
class FoundFace:
    """One face of one frame, classified: its box (x, y, w, h in frame pixels), detector score, probabilities
    and five landmarks (frame pixels, for re-identification's dlib chip)."""

    box: tuple[float, float, float, float]
    score: float
    probs: np.ndarray
    landmarks: np.ndarray | None = None


@dataclass(frozen=True)
class TrackedFace:
    track: int                     # 1, 2, ... in order of first appearance within one video
    box: tuple[float, float, float, float]
    score: float
    raw_probs: np.ndarray          # this frame's own
    probs: np.ndarray              # smoothed over the track's recent frames (the raw ones without smoothing)
    label: str                     # the run's decision on `probs`
    probability: float | None      # of `label` (None for a multi-attribute run)
    decided: list[int] | None      # multi-attribute: 0/1 per attribute
    raw_label: str                 # the run's decision on `raw_probs`


class FrameAnalyser:
    """Detect, align and classify the faces of a batch of frames.

    `threads`: torch threads while classifying (None: leave torch's setting). One by default, as the detector
    uses: a video's batches are a few dozen small faces, and on a busy 2-core CPU a second torch thread made
    classifying 3 faces take 200-700 ms instead of 10-15 ms (spin-waiting threads; measured)."""

    def __init__(self, classifier: Classifier, alignment: FaceAlignment, tta: str = "none", threads: int | None = 1):
        check_alignment(alignment, "all")
        self.classifier, self.alignment, self.tta, self.threads = classifier, alignment, tta, threads
        self.detector = create_detector(alignment.detector, alignment.detect_side)

    def analyse(self, frames: Sequence[np.ndarray]) -> list[list[FoundFace]]:
        prep = self.classifier.preprocessing
        found = self.detector.detect(frames, self.alignment.min_face) if frames else []
        judged = [faces_of_frame("<frame>", pixels, faces, self.alignment, prep.size, self.detector).used
                  for pixels, faces in zip(frames, found)]
        crops = [prep.colour_crop(face.crop) for used in judged for face in used]
        with torch_threads(self.threads):
            probs = iter(with_tta(self.classifier.classify, np.stack(crops), self.tta) if crops else [])
        return [[FoundFace(face.face.box, face.face.score, next(probs), face.face.landmarks) for face in used]
                for used in judged]


@dataclass
class _Track:
    number: int
    box: np.ndarray                # x1, y1, x2, y2 when last seen
    seen_s: float                  # time last seen
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))   # box corners' pixels per second

    def predicted(self, time_s: float) -> np.ndarray:
        return self.box + self.velocity * (time_s - self.seen_s)


class FaceTracker:
    """ByteTrack's association (Zhang et al., 2022) on face boxes, in NumPy and SciPy.

    Each track's box is carried forward at its recent velocity to the new frame's time; the confident faces
    are matched to those boxes first (Hungarian assignment on 1 - IoU), then the less confident ones to the
    tracks left, so an unsure detection never takes a track from a sure one. A face left unmatched starts a
    track; a track unmatched for up to `keep_seconds`, or three times the gap between the last two updates
    when that is longer (`--every` on a slow video), survives missed detections and ends after that, so a
    face that leaves and comes back later gets a new number, unless `update`'s `returning` (re-identification,
    inference/reid.py) says which ended track it is.

    A library tracker was the first choice: supervision 0.31 no longer ships ByteTrack (0.28-0.30 kept it
    deprecated, "removed in v0.31"; it moved to the `trackers` package, which requires the GUI build of OpenCV
    and so libGL), and norfair pins numpy<2."""

    def __init__(self, min_iou: float = 0.2, confident: float = 0.98, keep_seconds: float = 1.0):
        self.min_iou, self.confident, self.keep_seconds = min_iou, confident, keep_seconds
        self.tracks: list[_Track] = []
        self.started = 0
        self.last_s: float | None = None   # time of the last update
        self.gap_s = 0.0                   # seconds between the last two updates

    def update(self, boxes: Sequence[tuple[float, float, float, float]], scores: Sequence[float],
               time_s: float, returning: Callable[[list[int]], list[int | None]] | None = None) -> list[int]:
        """The track number of each face (boxes x, y, w, h) of the frame at `time_s`. `returning`: given the
        faces about to start a track (their indices), the old number of each one that is a face come back."""
        if self.last_s is not None:
            self.gap_s = time_s - self.last_s
        self.last_s = time_s
        keep = max(self.keep_seconds, 3 * self.gap_s)
        self.tracks = [t for t in self.tracks if time_s - t.seen_s <= keep]
        corners = np.array([(x, y, x + w, y + h) for x, y, w, h in boxes], dtype=np.float64).reshape(-1, 4)
        numbers: list[int | None] = [None] * len(corners)
        free = list(range(len(self.tracks)))
        confident = [i for i, s in enumerate(scores) if s >= self.confident]
        unsure = [i for i, s in enumerate(scores) if s < self.confident]
        for group in (confident, unsure):
            free = self._match(group, corners, free, numbers, time_s)
        new = [i for i, number in enumerate(numbers) if number is None]
        old = returning(new) if returning and new else [None] * len(new)
        for i, number in zip(new, old):
            if number is None:
                self.started += 1
                number = self.started
            self.tracks.append(_Track(number, corners[i], time_s))
            numbers[i] = number
        return numbers

    @property
    def live(self) -> set[int]:
        """The numbers of the tracks still open (a face that comes back to one of them keeps its number)."""
        return {t.number for t in self.tracks}

    def _match(self, faces: list[int], corners: np.ndarray, free: list[int], numbers: list,
               time_s: float) -> list[int]:
        if not faces or not free:
            return free
        from scipy.optimize import linear_sum_assignment

        predicted = np.stack([self.tracks[t].predicted(time_s) for t in free])
        overlap = _iou(corners[faces], predicted)
        rows, cols = linear_sum_assignment(-overlap)
        taken = set()
        for r, c in zip(rows, cols):
            if overlap[r, c] < self.min_iou:
                continue
            track = self.tracks[free[c]]
            elapsed = time_s - track.seen_s
            if elapsed > 0:  # velocity as a running mean: one jittery box does not throw the track off
                track.velocity = 0.5 * track.velocity + 0.5 * (corners[faces[r]] - track.box) / elapsed
            track.box, track.seen_s = corners[faces[r]], time_s
            numbers[faces[r]] = track.number
            taken.add(free[c])
        return [t for t in free if t not in taken]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) boxes as x1, y1, x2, y2 -> (N, M) intersection over union."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


class ProbabilitySmoother:
    """Each track's probabilities as an exponential moving average with time constant `seconds`: a frame
    `dt` seconds after the last one moves the average by 1 - exp(-dt / seconds) of the way to its own
    answer, so the weighting is the same whatever the frame rate or --every. 0: no smoothing. Times are
    whatever clock the caller keeps (a video's timestamps, a camera stream's arrival times)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._state: dict[int, tuple[float, np.ndarray]] = {}

    def __call__(self, track: int, time_s: float, probs: np.ndarray) -> np.ndarray:
        if self.seconds <= 0:
            return probs
        last = self._state.get(track)
        if last is None:
            smoothed = probs
        else:
            weight = 1.0 - math.exp(-max(time_s - last[0], 0.0) / self.seconds)
            smoothed = last[1] + weight * (probs - last[1])
        self._state[track] = (time_s, smoothed)
        return smoothed

    def __len__(self) -> int:
        """How many tracks' averages are held."""
        return len(self._state)

    def keep_only(self, tracks: set[int]) -> None:
        """Forget the tracks that ended, so a camera stream of hours holds only the faces in view."""
        for track in self._state.keys() - tracks:
            del self._state[track]


class FramePipeline:
    """Frames of one video (or camera) in order, in batches -> per frame its tracked, labelled faces.
    With an `embedder` (inference/reid.py), a face lost for a while comes back under its old number."""

    def __init__(self, classifier: Classifier, alignment: FaceAlignment, smooth_seconds: float = 0.0,
                 tta: str = "none", embedder: DlibEmbedder | None = None):
        self.classifier = classifier
        self.analyser = FrameAnalyser(classifier, alignment, tta)
        self.tracker = FaceTracker()
        self.smoother = ProbabilitySmoother(smooth_seconds)
        self.reid = FaceReID(embedder) if embedder is not None else None

    def process(self, frames: Sequence[np.ndarray], times: Sequence[float]) -> list[list[TrackedFace]]:
        decision = self.classifier.decision
        answers = []
        for frame, faces, time_s in zip(frames, self.analyser.analyse(frames), times):
            tracks = self._track(frame, faces, time_s)
            tracked = []
            for face, track in zip(faces, tracks):
                probs = self.smoother(track, time_s, face.probs)
                label, probability, decided = decision.label(probs)
                raw_label = decision.label(face.probs)[0]
                tracked.append(TrackedFace(track, face.box, face.score, face.probs, probs, label, probability,
                                           decided, raw_label))
            self.smoother.keep_only(self.tracker.live)
            answers.append(tracked)
        return answers

    def _track(self, frame: np.ndarray, faces: list[FoundFace], time_s: float) -> list[int]:
        boxes, scores = [f.box for f in faces], [f.score for f in faces]
        if self.reid is None:
            return self.tracker.update(boxes, scores, time_s)

        def returning(new: list[int]) -> list[int | None]:
            return self.reid.returning(frame, time_s, [faces[i].landmarks for i in new], [boxes[i] for i in new])

        tracks = self.tracker.update(boxes, scores, time_s, returning)
        self.reid.observe(frame, time_s, [f.landmarks for f in faces], boxes, tracks, self.tracker.live)
        return tracks
