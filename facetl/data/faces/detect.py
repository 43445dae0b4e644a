"""Finding faces in whole photos: a small detector interface and MTCNN behind it.

A detector takes decoded RGB photos and returns, per photo, every face it found with a box, a score
and five landmarks, always in the original photo's pixel coordinates. Large photos are searched on a
downscaled copy (the boxes are mapped back), so a 12-megapixel photo costs about what a 1024-pixel one
does; the crops are cut from the original by the caller.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from facetl.data.faces.cascade import run_cascade
from facetl.errors import FacetlError

# The order of the five landmarks, as every detector must return them (left/right as seen in the photo).
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# MTCNN's first network looks at 12-pixel windows: it cannot see a face smaller than this in the
# image it is given, so a downscaled copy loses faces smaller than 12 / scale in the original.
_MTCNN_WINDOW = 12
# Photos of one detection size are passed to the network together, at most this many at once.
_BATCH = 8
# Each level of MTCNN's image pyramid is this much smaller than the last: one level per octave. MTCNN's
# usual 0.709 (two per octave) made P-Net read 1.5x the pixels and detection take 1.3-1.7x as long, for
# the same faces: on composites of about 1,000 faces 20 to 200 pixels wide (benchmarks/faces_check.py,
# seeds 0, 1, 5, 6), 0.5 found the same faces with the same box overlap and, refined, landmark error.
PYRAMID_FACTOR = 0.5


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]   # x, y, width, height in the original photo's pixels
    score: float                             # the detector's confidence, 0..1
    landmarks: np.ndarray                    # (5, 2) float32 x, y in the order of LANDMARKS

    @property
    def side(self) -> float:
        """The face's size for `min_face`: the shorter side of its box."""
        return min(self.box[2], self.box[3])

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


class FaceDetector(Protocol):
    name: str
    view_size: int   # the side of the square face views that view_landmarks reads

    def detect(self, photos: Sequence[np.ndarray], min_face: int = 20) -> list[list[DetectedFace]]:
        """Every face at least about `min_face` pixels, per photo (HxWx3 uint8 RGB), best first."""
        ...

    def view_landmarks(self, views: np.ndarray) -> np.ndarray:
        """The five landmarks (N, 5, 2) in pixels of each of N face views (N, view_size, view_size, 3)."""
        ...


class MTCNNDetector:
    """facenet-pytorch's MTCNN (its weights ship inside the wheel), on the CPU, built once."""

    name = "mtcnn"
    view_size = 48   # ONet's input: its last stage, which gives the landmarks

    def __init__(self, max_side: int = 1024, threads: int | None = 1):
        from facenet_pytorch import MTCNN  # imported here: torch start-up is paid only when detecting

        self.max_side = max_side
        self.threads = threads
        # only its three networks and thresholds are used: run_cascade runs the stages (cascade.py)
        self._mtcnn = MTCNN(keep_all=True, device="cpu", select_largest=False)
        for name in ("pnet", "rnet", "onet"):
            setattr(self._mtcnn, name, _channels_last(getattr(self._mtcnn, name)))

    def detect(self, photos: Sequence[np.ndarray], min_face: int = 20) -> list[list[DetectedFace]]:
        copies = [_detection_copy(photo, self.max_side) for photo in photos]
        found: list[list[DetectedFace]] = [[] for _ in photos]
        # MTCNN batches only photos of one size: group them by the size of their detection copy
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (copy, _) in enumerate(copies):
            groups.setdefault(copy.shape[:2], []).append(i)
        for members in groups.values():
            scale = copies[members[0]][1]
            for start in range(0, len(members), _BATCH):
                chunk = members[start:start + _BATCH]
                batch = np.stack([copies[i][0] for i in chunk])
                for i, faces in zip(chunk, self._run(batch, min_face * scale)):
                    found[i] = [_scaled(face, 1.0 / scale) for face in faces]
        return found

    def _run(self, batch: np.ndarray, min_size: float) -> list[list[DetectedFace]]:
        # min_size only sets where the image pyramid starts (torch's thread count is process-wide: one
        # detector per thread)
        with torch_threads(self.threads):
            found = run_cascade(self._mtcnn, batch, max(float(_MTCNN_WINDOW), min_size), PYRAMID_FACTOR)
        return [_faces(boxes[:, :4], boxes[:, 4], points) for boxes, points in found]

    def view_landmarks(self, views: np.ndarray) -> np.ndarray:
        import torch

        # scaled as facenet-pytorch feeds its networks; ONet answers x1..x5, y1..y5 as fractions of the view
        batch = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2).float()
        with torch.no_grad(), torch_threads(self.threads):
            _, points, _ = self._mtcnn.onet((batch - 127.5) * 0.0078125)
        points = points.numpy().reshape(len(views), 2, 5).transpose(0, 2, 1)
        return (points * np.array([views.shape[2], views.shape[1]], dtype=np.float32)).astype(np.float32)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with this many torch threads, then restore. MTCNN is hundreds of tiny tensor operations:
    a second thread gains little on an idle CPU, and on a shared one spin-waiting threads made
    detection 10-20x slower (measured: 2.9 s against 0.19 s for a 512x512 photo on 2 busy cores)."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _channels_last(net):
    """The network, fed channels-last tensors: the same numbers, 1.5-3x faster on the CPU (measured with
    one thread: PNet 21 -> 15 ms on 384x288, RNet 42 -> 14 ms on 150 candidates, ONet 16 -> 6 ms)."""
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    return ChannelsLast(net)


def _detection_copy(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The photo, or a copy whose longest side is max_side, and the scale from photo to copy."""
    height, width = photo.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return photo, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # PIL's reduce-then-resize averages whole pixel blocks: no aliasing, unlike a torch resample
    copy = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR, reducing_gap=2.0))
    return copy, size[0] / width


def _faces(boxes, scores, points) -> list[DetectedFace]:
    if boxes is None:  # MTCNN's "no face" is None, not an empty array
        return []
    faces = []
    for (x1, y1, x2, y2), score, marks in zip(boxes, scores, points):
        faces.append(DetectedFace((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), float(score),
                                  np.asarray(marks, dtype=np.float32).reshape(5, 2)))
    return sorted(faces, key=lambda f: -f.score)


def _scaled(face: DetectedFace, factor: float) -> DetectedFace:
    if factor == 1.0:
        return face
    x, y, w, h = face.box
    return DetectedFace((x * factor, y * factor, w * factor, h * factor), face.score,
                        face.landmarks * np.float32(factor))


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {"mtcnn": MTCNNDetector}


def detector_names() -> list[str]:
    return sorted(_DETECTORS)


@functools.lru_cache(maxsize=4)
def create_detector(name: str, max_side: int = 1024, threads: int | None = 1) -> FaceDetector:
    """The detector called `name`, built once per process and reused (networks load only once).

    `threads`: torch threads while detecting (None: leave torch's setting alone)."""
    if name not in _DETECTORS:
        raise FacetlError(f"unknown face detector {name!r}; valid detectors: {', '.join(detector_names())}")
    if max_side < 64:
        raise FacetlError(f"the detection size must be at least 64 pixels, not {max_side}")
    return _DETECTORS[name](max_side, threads)
