"""Group photos with known faces, made by pasting aligned face crops onto a larger background.

An aligned crop's landmarks are known (they are the template's), so a crop scaled, rotated and pasted
at a chosen place gives a photo whose true face boxes and landmarks are known exactly. The tests, the
detection check (`benchmarks/faces_check.py`) and the benchmark use these to measure recall, box
accuracy, and whether a face found in a photo gets the same label as its crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from facetl.data.faces.align import template_points

# Where MTCNN puts its box in a 112-pixel ArcFace-aligned crop (x, y, w, h): the mean over 60
# celebrity_faces crops, measured; centred on the crop, taller than wide as MTCNN's boxes are.
CROP_FACE_BOX = (18.0, 10.5, 76.0, 105.0)


@dataclass(frozen=True)
class PastedFace:
    box: tuple[float, float, float, float]   # x, y, w, h of CROP_FACE_BOX in the photo (axis-aligned hull)
    landmarks: np.ndarray                    # (5, 2) the template's landmarks in the photo
    side: int                                # the pasted crop's side, pixels
    source: int                              # index of the crop in the list given


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, blurred colour field: a neutral stand-in for a room, with no face-like structure."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(60, 200, size=(6, 8, 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    return np.asarray(field.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 40)))


def paste_faces(photo: np.ndarray, crops: list[np.ndarray],
                placements: list[tuple[float, float, int, float]]) -> tuple[np.ndarray, list[PastedFace]]:
    """Paste crops[i] with its centre at (x, y), `side` pixels wide, rotated by `angle` degrees.

    Returns the new photo and, per crop, where its face box and landmarks ended up."""
    canvas = Image.fromarray(photo).convert("RGBA")
    faces = []
    for index, (crop, (x, y, side, angle)) in enumerate(zip(crops, placements)):
        base = crop.shape[0]
        # resize first (LANCZOS averages, so small faces are not aliased), then rotate and place
        small = Image.fromarray(crop).convert("RGBA").resize((side, side), Image.LANCZOS)
        theta = np.deg2rad(angle)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        # photo point = rotation @ (crop point - crop centre) + (x, y), for points of the resized crop
        to_photo = np.eye(3)
        to_photo[:2, :2] = rotation
        to_photo[:2, 2] = np.array([x, y]) - rotation @ np.array([side / 2, side / 2])
        inverse = np.linalg.inv(to_photo)
        layer = small.transform(canvas.size, Image.AFFINE, tuple(inverse[:2].ravel()), Image.BICUBIC,
                                fillcolor=(0, 0, 0, 0))
        canvas = Image.alpha_composite(canvas, layer)
        faces.append(_where(to_photo, side / base, base, side, index))
    return np.asarray(canvas.convert("RGB")), faces


def _where(to_photo: np.ndarray, factor: float, base: int, side: int, index: int) -> PastedFace:
    def mapped(points: np.ndarray) -> np.ndarray:
        homogeneous = np.c_[points * factor, np.ones(len(points))]
        return (to_photo @ homogeneous.T).T[:, :2]

    x, y, w, h = (v * base / 112.0 for v in CROP_FACE_BOX)
    corners = mapped(np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]))
    low, high = corners.min(axis=0), corners.max(axis=0)
    return PastedFace((float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])),
                      mapped(template_points("arcface", base)), side, index)


def random_composite(crops: list[np.ndarray], width: int, height: int, rng: np.random.Generator,
                     sides: tuple[int, int] = (60, 200), max_angle: float = 10.0
                     ) -> tuple[np.ndarray, list[PastedFace]]:
    """A photo with every crop pasted at a random size and angle, without overlaps (fewer when full)."""
    placed: list[tuple[float, float, int, float]] = []
    chosen = []
    for index in range(len(crops)):
        for _ in range(50):  # rejection sampling: try a few spots, give up on this crop when crowded
            side = int(rng.integers(sides[0], min(sides[1], width, height) + 1))
            half = side * 0.75  # room for a rotated square
            if width < 2 * half or height < 2 * half:
                break
            x, y = rng.uniform(half, width - half), rng.uniform(half, height - half)
            if all(abs(x - px) > (side + ps) * 0.75 or abs(y - py) > (side + ps) * 0.75
                   for px, py, ps, _ in placed):
                placed.append((x, y, side, float(rng.uniform(-max_angle, max_angle))))
                chosen.append(index)
                break
    photo, faces = paste_faces(background(width, height, int(rng.integers(1 << 30))),
                               [crops[i] for i in chosen], placed)
    return photo, [PastedFace(f.box, f.landmarks, f.side, chosen[f.source]) for f in faces]


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match_faces(truth: list[PastedFace], found_boxes: list[tuple[float, float, float, float]],
                min_iou: float = 0.4) -> list[int | None]:
    """For each true face, the index of the detection that best overlaps it (None: missed), greedily."""
    taken: set[int] = set()
    matches: list[int | None] = []
    for face in truth:
        scores = [(box_iou(face.box, box), j) for j, box in enumerate(found_boxes) if j not in taken]
        best = max(scores, default=(0.0, None))
        if best[1] is not None and best[0] >= min_iou:
            taken.add(best[1])
            matches.append(best[1])
        else:
            matches.append(None)
    return matches


def moving_faces(crops: list[np.ndarray], width: int, height: int, frames: int, seed: int = 0,
                 sides: tuple[int, int] = (90, 130), speed: float = 4.0):
    """Frames of a clip in which every crop drifts over one background, each in its own vertical lane (so
    faces never cover each other and the truth stays clear), bouncing off the lane's edges and turning
    slowly: yields (frame, faces) with each face's true box and landmarks (`source`: which crop)."""
    rng = np.random.default_rng(seed)
    scene = background(width, height, seed)
    count = len(crops)
    side = rng.integers(sides[0], sides[1] + 1, size=count)
    lane = width / count
    centre = (np.arange(count) + 0.5) * lane
    # a rotated square needs 0.75 of its side around its centre; a lane narrower than that keeps it centred
    x_low = np.minimum(centre - lane / 2 + side * 0.75, centre)
    x_high = np.maximum(centre + lane / 2 - side * 0.75, centre)
    y_low, y_high = side * 0.75, height - side * 0.75
    x, y = rng.uniform(x_low, x_high), rng.uniform(y_low, y_high)
    velocity = rng.uniform(-speed, speed, size=(count, 2))
    angle, spin = rng.uniform(-8, 8, size=count), rng.uniform(-0.3, 0.3, size=count)
    for _ in range(frames):
        placements = [(float(x[i]), float(y[i]), int(side[i]), float(angle[i])) for i in range(count)]
        yield paste_faces(scene, crops, placements)
        x, y = x + velocity[:, 0], y + velocity[:, 1]
        for position, low, high, axis in ((x, x_low, x_high, 0), (y, y_low, y_high, 1)):
            bounce = (position < low) | (position > high)
            velocity[bounce, axis] *= -1
            np.clip(position, low, high, out=position)
        angle = np.clip(angle + spin, -12, 12)
