"""Re-identification: a face the detector lost for a while comes back under its old track number.

`FaceTracker` matches faces to tracks by place alone and ends a track after about a second without a
detection, so a face hidden for longer came back as a new track. `FaceReID` keeps each ended track for
`keep_seconds` more, with the dlib chip of its last detection, and when the tracker is about to start a
track, it offers the lost ones: as in DeepSORT (Wojke et al., 2017), a lost track is taken back only if
the place is plausible (the new face's centre within reach of where it was last seen, the reach growing
with the time it was away; a similar size) and the appearance agrees (the 128-d dlib descriptor within
`threshold`, 0.6 being dlib's own same-person distance). The descriptors are computed only then: for the
faces that would start a track and the lost tracks they could be, so the frames between cost nothing.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from facetl.data.faces.align import DLIB_SIZE, align_face
from facetl.data.faces.detect import torch_threads
from facetl.errors import FacetlError
from facetl.models.packaged import cached_path, fetch_command, packaged, weight_file

REID_MODES = ("auto", "on", "off")
SAME_PERSON = 0.6      # dlib's threshold on the Euclidean distance of two descriptors
KEEP_SECONDS = 5.0     # how long a lost track may still come back
REACH = 0.5            # face sides a lost face may have moved per second away, beyond one side


class DlibEmbedder:
    """dlib's face-recognition ResNet (models/dlib_resnet.py) on 150-px dlib chips -> 128-d descriptors."""

    def __init__(self, path):
        import torch

        from facetl.models.dlib_resnet import DLIB_PIXEL_MEAN, build_features, load_dlib_weights

        self.features, _ = build_features()
        load_dlib_weights(self.features, path)
        self.features.eval()
        self.mean = torch.tensor(DLIB_PIXEL_MEAN).view(1, 3, 1, 1)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
        with torch.no_grad(), torch_threads(1):  # a face or two at a time: one thread, as the classifier
            return self.features((pixels - self.mean) / 256.0).flatten(1).numpy()


def dlib_chip(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    return align_face(frame, landmarks, DLIB_SIZE, "dlib")


def open_embedder(mode: str) -> DlibEmbedder | None:
    """The embedder for `--reid` auto (when the dlib weights are cached), on (they must be) or off."""
    if mode not in REID_MODES:
        raise FacetlError(f"--reid {mode}: choose one of {', '.join(REID_MODES)}")
    if mode == "off":
        return None
    if mode == "auto" and not cached_path(packaged("dlib")).is_file():
        print(f"note: faces lost for over a second come back under a new track number; `{fetch_command('dlib')}` "
              "gets the dlib weights that re-identify them", file=sys.stderr)
        return None
    return DlibEmbedder(weight_file("dlib"))


@dataclass
class _Sighting:
    """Where a track's face was last detected: its frame (a reference, not a copy: the pipeline's frames are
    fresh arrays that nothing writes into afterwards) and landmarks."""
    frame: np.ndarray
    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    time_s: float


@dataclass
class _Lost:
    chip: np.ndarray
    box: tuple[float, float, float, float]
    time_s: float
    descriptor: np.ndarray | None = None


class FaceReID:
    """The tracks of one video (or stream) that ended lately, and which new face is one of them."""

    def __init__(self, embedder: DlibEmbedder, keep_seconds: float = KEEP_SECONDS, threshold: float = SAME_PERSON):
        self.embedder, self.keep_seconds, self.threshold = embedder, keep_seconds, threshold
        self.last: dict[int, _Sighting] = {}   # live tracks
        self.lost: dict[int, _Lost] = {}
        self.embedded = 0                      # descriptors computed, for the benchmark

    def observe(self, frame: np.ndarray, time_s: float, landmarks: Sequence[np.ndarray],
                boxes: Sequence[tuple], numbers: Sequence[int], live: set[int]) -> None:
        """After the tracker's update: remember each track's last detection; tracks that ended become lost
        (their chip cut now, so the frame is let go), and lost ones older than `keep_seconds` are forgotten."""
        for marks, box, number in zip(landmarks, boxes, numbers):
            self.last[number] = _Sighting(frame, marks, box, time_s)
        for number in [n for n in self.last if n not in live]:
            seen = self.last.pop(number)
            self.lost[number] = _Lost(dlib_chip(seen.frame, seen.landmarks), seen.box, seen.time_s)
        self.lost = {n: t for n, t in self.lost.items() if time_s - t.time_s <= self.keep_seconds}

    def returning(self, frame: np.ndarray, time_s: float, landmarks: Sequence[np.ndarray],
                  boxes: Sequence[tuple]) -> list[int | None]:
        """For faces about to start a track: the lost track each one is, or None (a new face)."""
        candidates = [n for n, t in self.lost.items() if time_s - t.time_s <= self.keep_seconds]
        if not boxes or not candidates:
            return [None] * len(boxes)
        plausible = np.array([[_plausible(box, self.lost[n], time_s) for n in candidates] for box in boxes])
        if not plausible.any():
            return [None] * len(boxes)
        faces = self._embed([dlib_chip(frame, marks) for marks in landmarks])
        distance = np.linalg.norm(faces[:, None] - self._lost_descriptors(candidates)[None], axis=2)
        distance[~plausible] = np.inf
        from scipy.optimize import linear_sum_assignment

        answers: list[int | None] = [None] * len(boxes)
        rows, cols = linear_sum_assignment(np.where(np.isfinite(distance), distance, 1e6))
        for r, c in zip(rows, cols):
            if distance[r, c] < self.threshold:
                answers[r] = candidates[c]
                del self.lost[candidates[c]]
        return answers

    def _lost_descriptors(self, numbers: list[int]) -> np.ndarray:
        todo = [n for n in numbers if self.lost[n].descriptor is None]
        if todo:
            for n, descriptor in zip(todo, self._embed([self.lost[n].chip for n in todo])):
                self.lost[n].descriptor = descriptor
        return np.stack([self.lost[n].descriptor for n in numbers])

    def _embed(self, chips: list[np.ndarray]) -> np.ndarray:
        self.embedded += len(chips)
        return self.embedder(np.stack(chips))


def _plausible(box: tuple, lost: _Lost, time_s: float) -> bool:
    """Could the face in `box` be the one last seen at `lost.box`: near enough for the time away, alike in size."""
    side, lost_side = max(box[2], box[3]), max(lost.box[2], lost.box[3])
    if not 0.5 <= side / max(lost_side, 1e-9) <= 2.0:
        return False
    dx = (box[0] + box[2] / 2) - (lost.box[0] + lost.box[2] / 2)
    dy = (box[1] + box[3] / 2) - (lost.box[1] + lost.box[3] / 2)
    return float(np.hypot(dx, dy)) <= lost_side * (1.0 + REACH * (time_s - lost.time_s))
