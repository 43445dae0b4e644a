"""Test-time augmentation: a run's probabilities for a batch of images, averaged over simple views of each.

Light on purpose (numpy only): the command line reads its choices without importing torch.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facetl.errors import FacetlError

TTA_MODES = ("none", "flip")
TTA_HELP = ("test-time augmentation: none, or flip: each image's class probabilities are the mean of the "
            "image's and its mirror image's (probabilities are averaged, not logits)")


def with_tta(classify: Callable[[np.ndarray], np.ndarray], images: np.ndarray, tta: str = "none") -> np.ndarray:
    """(B, size, size, 3) uint8 images -> (B, classes) probabilities, with test-time augmentation. The one
    place evaluate and predict (crops or aligned faces, torch or ONNX) apply it."""
    if tta not in TTA_MODES:
        raise FacetlError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
    probs = classify(images)
    if tta == "flip":
        # Probabilities, not logits: the mean stays a probability the run's threshold was chosen for, and a
        # two-class run's [1 - p, p] and a many-class run's softmax are averaged alike (ONNX gives no logits).
        probs = (probs + classify(np.ascontiguousarray(images[:, :, ::-1]))) / 2
    return probs
