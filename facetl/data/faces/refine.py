"""Landmarks found again on the face turned upright and centred, and on its mirror image, averaged.

A detector's landmark network sees each face where its search happened to box it: off-centre, tilted,
at whatever size the box had, and its landmark errors depend on that view. After a first alignment the
face can be shown to the same network in one canonical view, upright and centred, and in that view's
mirror image, whose errors are partly independent: the two answers, mapped back to the photo and
averaged (left and right swapped for the mirror), are the landmarks the crop is aligned with.

Measured with MTCNN on composites of held-out celebrity faces (benchmarks/faces_check.py): the crop's
alignment error fell from 1.4-1.6 to 1.1 pixels (of a 112-pixel crop, mean over the template's points),
at one extra O-Net call per photo (two 48x48 views per face). What is left is mostly the network's error
for that face, not for that view: a second pass, or more views (shifted, scaled), did not lower it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from facetl.data.faces.align import TEMPLATES, alignment_transform, warp
from facetl.data.faces.detect import LANDMARKS, FaceDetector

# The canonical view: a square of the ArcFace template's frame (fractions of its side; whatever template the
# crop is cut to, landmarks are found again in this one view) that the landmark network sees whole. Chosen on composites of held-out faces: the box around the eyes to the
# chin that MTCNN's last stage is used to; its neighbours within 4 % of the side measured the same.
VIEW_CENTRE = (0.5, 60.0 / 112.0)
VIEW_SIDE = 100.0 / 112.0

# Where each of LANDMARKS is in a mirror image's answer: the eyes swap, the mouth corners swap.
_MIRRORED = [1, 0, 2, 4, 3]


VIEW_TEMPLATE = "arcface"


def view_transform(landmarks: np.ndarray, side: int) -> np.ndarray:
    """The 3x3 matrix from photo coordinates to a side x side canonical view of the face."""
    base = TEMPLATES[VIEW_TEMPLATE][0]
    to_template = alignment_transform(landmarks, VIEW_TEMPLATE, base)
    zoom = side / (VIEW_SIDE * base)
    centre = np.array(VIEW_CENTRE) * base
    to_view = np.array([[zoom, 0.0, side / 2 - zoom * centre[0]],
                        [0.0, zoom, side / 2 - zoom * centre[1]],
                        [0.0, 0.0, 1.0]])
    return to_view @ to_template


def refine_landmarks(image: Image.Image, landmarks: Sequence[np.ndarray], detector: FaceDetector) -> list[np.ndarray]:
    """Every face's landmarks found again in its canonical view and that view's mirror image, averaged.

    One call of the detector's landmark network for all the faces of the photo. A face whose
    landmarks are degenerate (no similarity transform fits them) keeps them."""
    side = detector.view_size
    transforms, views = [], []
    for marks in landmarks:
        try:
            to_view = view_transform(marks, side)
        except ValueError:
            to_view = None
        transforms.append(to_view)
        if to_view is not None:
            views.append(warp(image, to_view, side))
    if not views:
        return [np.asarray(m, dtype=np.float32) for m in landmarks]
    views = np.stack(views)
    found = detector.view_landmarks(np.concatenate([views, views[:, :, ::-1]]))
    direct, mirrored = found[:len(views)], found[len(views):, _MIRRORED]
    mirrored = np.stack([side - mirrored[..., 0], mirrored[..., 1]], axis=-1)
    averaged = iter((direct + mirrored) / 2)
    refined = []
    for marks, to_view in zip(landmarks, transforms):
        if to_view is None:
            refined.append(np.asarray(marks, dtype=np.float32))
            continue
        in_view = np.c_[next(averaged), np.ones(len(LANDMARKS))]
        refined.append((np.linalg.solve(to_view, in_view.T)[:2].T).astype(np.float32))
    return refined
