"""Cutting an aligned face crop out of a photo from its five landmarks.

A similarity transform (rotation, uniform scale, shift) maps the detected landmarks onto a canonical
template; the photo is warped through it into a square crop. With the ArcFace template at 112 pixels
this gives the geometry of ArcFace / Glint360K crops (and of `celebrity_faces`), so a model trained on
those crops sees photos the way it saw its training images.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.transform import SimilarityTransform

from facetl.errors import FacetlError

# Landmark positions (x, y) in a 112x112 crop, in the detector's order: left eye, right eye, nose,
# left mouth corner, right mouth corner. "arcface" is insightface's standard 5-point template.
TEMPLATES: dict[str, tuple[int, np.ndarray]] = {
    "arcface": (112, np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                               [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)),
}


def template_points(template: str, size: int, scale: float = 1.0) -> np.ndarray:
    """The template's landmarks for a size x size crop, zoomed about the centre by `scale`."""
    if template not in TEMPLATES:
        raise FacetlError(f"unknown face template {template!r}; valid templates: {', '.join(sorted(TEMPLATES))}")
    if not 0.1 <= scale <= 4.0:
        raise FacetlError(f"face scale must be between 0.1 and 4, not {scale}")
    base, points = TEMPLATES[template]
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


def align_face(photo: np.ndarray | Image.Image, landmarks: np.ndarray, size: int, template: str = "arcface",
               scale: float = 1.0) -> np.ndarray:
    """The face whose five landmarks are given, as a (size, size, 3) uint8 crop."""
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
    return warp(image, alignment_transform(landmarks, template, size, scale), size)


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
