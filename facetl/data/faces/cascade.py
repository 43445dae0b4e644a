"""MTCNN's three-stage cascade, as facenet-pytorch runs it, with every resampling done by PIL on uint8.

facenet-pytorch resamples with torch's area interpolation on float tensors: every pyramid level from the
full photo, and each candidate box as a slice of the photo, one at a time. On the CPU that was about a
third of detection time. Here every resize is PIL's box filter (an exact area average) on 8-bit pixels,
started from the smallest 2x-halving of the photo that is still at least twice the output (`_Mipmap`).
The networks, thresholds, box regression and non-maximum suppression are facenet-pytorch's own, called
in the same order; only the pixels fed to the networks differ slightly (a different, exact area filter
and 8-bit rounding). Boxes and landmarks move by about a pixel, within the detector's own noise: on
the composite check (benchmarks/faces_check.py) recall, box overlap and landmark error were unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def run_cascade(mtcnn, photos: Sequence[np.ndarray], min_size: float,
                factor: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per photo (all of one size): boxes (N, 5: x1, y1, x2, y2, score) and landmarks (N, 5, 2).

    `mtcnn`: facenet-pytorch's MTCNN, for its networks and thresholds; `min_size`: the smallest face
    searched for, in pixels; `factor`: each pyramid level's size relative to the last."""
    import torch

    images = [_Mipmap(photo) for photo in photos]
    height, width = photos[0].shape[:2]
    scales = _pyramid(height, width, min_size, factor)
    if not scales:  # the photo is smaller than the smallest face searched for
        return [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)) for _ in photos]
    with torch.no_grad():
        boxes, image_inds = _proposals(mtcnn, images, scales)
        boxes, image_inds = _refined(mtcnn, images, boxes, image_inds)
        boxes, image_inds, points = _final(mtcnn, images, boxes, image_inds)
    boxes, points, image_inds = boxes.numpy(), points.numpy(), image_inds.numpy()
    return [(boxes[image_inds == i], points[image_inds == i]) for i in range(len(photos))]


def _proposals(mtcnn, images: list["_Mipmap"], scales: list[float]):
    """Stage 1: P-Net slides over a pyramid whose first level makes a min_size face 12 pixels; its
    candidates, merged across levels, corrected and made square."""
    import torch
    from facenet_pytorch.models.utils.detect_face import generateBoundingBox, rerec
    from torchvision.ops.boxes import batched_nms

    width, height = images[0].size
    boxes, image_inds = [], []
    for scale in scales:
        size = (int(width * scale + 1), int(height * scale + 1))
        level = _tensor([image.resized(size) for image in images])
        reg, probs = mtcnn.pnet(level)
        found, inds = generateBoundingBox(reg, probs[:, 1], scale, mtcnn.thresholds[0])
        pick = batched_nms(found[:, :4], found[:, 4], inds, 0.5)
        boxes.append(found[pick])
        image_inds.append(inds[pick])
    boxes, image_inds = torch.cat(boxes), torch.cat(image_inds)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                         boxes[:, 4]], dim=1)
    return rerec(boxes), image_inds


def _refined(mtcnn, images: list["_Mipmap"], boxes, image_inds):
    """Stage 2: R-Net judges each candidate at 24x24 and corrects its box."""
    import torch
    from facenet_pytorch.models.utils.detect_face import bbreg, pad, rerec
    from torchvision.ops.boxes import batched_nms

    width, height = images[0].size
    boxes, image_inds, crops = _crops(images, boxes, image_inds, 24, pad, width, height)
    if not len(boxes):
        return boxes, image_inds
    reg, probs = mtcnn.rnet(crops)
    keep = probs[:, 1] > mtcnn.thresholds[1]
    boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
    image_inds, reg = image_inds[keep], reg[keep]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    return rerec(bbreg(boxes[pick], reg[pick])), image_inds[pick]


def _final(mtcnn, images: list["_Mipmap"], boxes, image_inds):
    """Stage 3: O-Net judges each at 48x48, gives the landmarks and the final box."""
    import torch
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, pad

    width, height = images[0].size
    points = torch.zeros(0, 5, 2)
    boxes, image_inds, crops = _crops(images, boxes, image_inds, 48, pad, width, height)
    if not len(boxes):
        return boxes, image_inds, points
    reg, marks, probs = mtcnn.onet(crops)
    keep = probs[:, 1] > mtcnn.thresholds[2]
    boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
    image_inds, reg, marks = image_inds[keep], reg[keep], marks[keep]
    side_x = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    side_y = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    points = torch.stack([side_x * marks[:, :5] + boxes[:, 0:1] - 1,
                          side_y * marks[:, 5:] + boxes[:, 1:2] - 1], dim=2)
    boxes = bbreg(boxes, reg)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
    return boxes[pick], image_inds[pick], points[pick]


def _pyramid(height: int, width: int, min_size: float, factor: float) -> list[float]:
    scales, scale = [], 12.0 / min_size
    shortest = min(height, width) * scale
    while shortest >= 12:
        scales.append(scale)
        scale *= factor
        shortest *= factor
    return scales


def _tensor(pixels: list[np.ndarray]):
    """uint8 HxWx3 images as the networks' input: NCHW float, (v - 127.5) / 128."""
    import torch

    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float()
    return (batch - 127.5) * 0.0078125


def _crops(images: list["_Mipmap"], boxes, image_inds, side: int, pad, width: int, height: int):
    """Each box's pixels (clipped to the photo, as facenet-pytorch clips them) resized to side x side, as
    one batch (None when there are none); boxes wholly outside the photo are dropped with their rows."""
    import torch

    if not len(boxes):
        return boxes, image_inds, None
    y, ey, x, ex = pad(boxes, width, height)
    keep = [k for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
    crops = [images[int(image_inds[k])].resized((side, side), (x[k] - 1, y[k] - 1, ex[k], ey[k])) for k in keep]
    index = torch.as_tensor(keep, dtype=torch.long)
    return boxes[index], image_inds[index], _tensor(crops) if crops else None


class _Mipmap:
    """A photo and its halvings (PIL's reduce: exact 2x2 averages), so that every resize can start from
    the smallest copy still at least twice the output: a box filter over the same area, at a fraction of
    the pixels read (a 300-pixel candidate box to 24x24: 5x faster from its 1/4 copy, measured)."""

    def __init__(self, photo: np.ndarray):
        self.levels = [Image.fromarray(photo)]
        self.size = self.levels[0].size  # (width, height)
        while min(self.levels[-1].size) >= 96:
            self.levels.append(self.levels[-1].reduce(2))

    def resized(self, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """The region `box` (x0, y0, x1, y1 in the photo's pixels; None: all of it) as size[0] x size[1] uint8."""
        x0, y0, x1, y1 = box if box is not None else (0, 0, *self.levels[0].size)
        level = 0
        while (level + 1 < len(self.levels) and (x1 - x0) / 2 ** (level + 1) >= 2 * size[0]
               and (y1 - y0) / 2 ** (level + 1) >= 2 * size[1]):
            level += 1
        f = 2 ** level
        return np.asarray(self.levels[level].resize(size, Image.BOX, box=(x0 / f, y0 / f, x1 / f, y1 / f)))
