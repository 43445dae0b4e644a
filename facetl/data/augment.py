"""Training-time augmentation on whole batches of tensors, and turning stored uint8 into model input.

Augmenting a batch at once (instead of one PIL image at a time) is what lets training read straight
from the decoded store. Every random draw comes from the generator passed in, so a seeded epoch is
the same with or without the feature cache.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

JITTER = 0.2  # brightness, contrast and saturation factors drawn from [1 - 0.2, 1 + 0.2]
DEFAULT_ROTATION = 10.0
# augmentation name -> (attribute, default amount): degrees, pixels of the training image, percent of its size
GEOMETRY = {"rotate": ("rotation", DEFAULT_ROTATION), "shift": ("shift", 2.0), "scale": ("scale", 5.0)}


def to_float(batch: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1], channels_last in memory. A batch in page-locked memory
    (`read_rows` for a GPU) is copied while the GPU goes on with earlier work."""
    if isinstance(batch, np.ndarray) and not (batch.flags.writeable and batch.flags.c_contiguous):
        batch = np.array(batch)  # a slice of the read-only memory map: torch wants its own copy
    x = torch.as_tensor(batch).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def read_rows(stored: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows `index` of a stored array (a memory map), in the order given: read in file order, which is fastest,
    into page-locked memory when they go to a GPU, so that copy can run beside the GPU's work."""
    order = np.argsort(index, kind="stable")
    dtype = torch.from_numpy(np.empty(0, dtype=stored.dtype)).dtype
    rows = torch.empty((len(index),) + tuple(stored.shape[1:]), dtype=dtype, pin_memory=device.type == "cuda")
    rows.numpy()[order] = stored[index[order]]
    return rows


class BatchAugment:
    """flip, jitter, rotate[:DEGREES], shift[:PIXELS] and scale[:PERCENT] applied per sample to a float batch in
    [0, 1]. Rotation, shift and scale are one similarity transform: small ones imitate the few pixels by which
    face alignment misses on whole photos (landmark error), so a model trained with them is not thrown by it."""

    def __init__(self, names: list[str]):
        self.flip = "flip" in names
        self.jitter = "jitter" in names
        self.rotation = self.shift = self.scale = 0.0
        for name in names:
            kind, _, amount = name.partition(":")
            if kind in GEOMETRY:
                setattr(self, GEOMETRY[kind][0], float(amount) if amount else GEOMETRY[kind][1])

    @property
    def active(self) -> bool:
        return self.flip or self.jitter or self.geometric

    @property
    def geometric(self) -> bool:
        return self.rotation > 0 or self.shift > 0 or self.scale > 0

    @property
    def flip_only(self) -> bool:
        return self.flip and not self.jitter and not self.geometric

    @staticmethod
    def draw_flips(n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=generator) < 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 flips: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        if self.flip:
            flips = self.draw_flips(n, generator) if flips is None else flips
            x = torch.where(flips.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
        if self.jitter:
            x = self._jitter(x, generator)
        if self.geometric:
            x = self._similarity(x, generator)
        return x

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        factors = (1 + (torch.rand(3, n, generator=generator) * 2 - 1) * JITTER).to(x.device).view(3, n, 1, 1, 1)
        brightness, contrast, saturation = factors
        x = (x * brightness).clamp(0, 1)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = ((x - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return ((x - grey) * saturation + grey).clamp(0, 1)

    def _similarity(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        draws = torch.rand(4, n, generator=generator) * 2 - 1  # drawn whatever is on, so a seed means one thing
        angles = draws[0] * math.radians(self.rotation)
        zoom = 1 + draws[1] * self.scale / 100  # > 1 shows the face larger
        cos, sin = torch.cos(angles) / zoom, torch.sin(angles) / zoom
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta[:, 0, 2] = draws[2] * self.shift * 2 / width  # affine_grid's coordinates span 2 across the image
        theta[:, 1, 2] = draws[3] * self.shift * 2 / height
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
