"""A model's predictions on one split, as the metrics, the plots and the report take them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SplitResult:
    """A model's predictions on one split: what every metric, plot and gallery is made from."""

    split: str                    # 'test', 'val', ...
    labels: np.ndarray
    probs: np.ndarray             # (images, classes)
    images: Sequence              # uint8 HxWx3 per image, read only for the galleries
    names: Sequence[str] | None = None   # each image's file, relative to the data folder, for the captions
    groups: Sequence[str] | None = None  # each image's group (--groups), for the metrics per group
    group_by: str | None = None          # what the groups are: the column or path:REGEX
