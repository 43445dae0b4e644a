"""Where the trainable part of the model gets its inputs: computed now, or read from the feature cache.

The model is split at `plan.cut`: `features[:cut]` is frozen, the rest trains. Both sources hand the
trainable part the output of the frozen prefix, drawing the same random numbers in the same order, so
a seeded run gives the same numbers with or without the cache:
  - `ImageSource` decodes nothing (the image store did that), augments the batch and runs the prefix;
  - `FeatureSource` reads prefix outputs computed once and stored memory-mapped, one slot per view
    (plain; plain + flipped for `flip`; K augmented views for `--cache-views K`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facetl.data.augment import BatchAugment, normalize, to_float
from facetl.errors import FacetlError
from facetl.train.distributed import Dist


class Precision:
    """Autocast settings: one for the frozen part (inference only) and one for the part that trains.

    `auto` picks, per device, what measured fastest here: on a CPU with native bf16, bf16 for the frozen
    part (2-3x faster forward passes) but fp32 for training (a bf16 training step of MobileNetV2's last
    block took 56 ms against 29 ms in fp32); on CUDA, bf16 (or fp16 with a gradient scaler) for both.
    """

    def __init__(self, name: str, device: torch.device):
        if name == "fp16" and device.type != "cuda":
            raise FacetlError("--precision fp16 needs a CUDA GPU; use bf16 or fp32")
        if name == "auto":
            if device.type == "cuda":
                name = frozen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                name, frozen = "fp32", ("bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32")
        else:
            frozen = name
        self.name, self.frozen, self.device = name, frozen, device

    def describe(self) -> str:
        return self.name if self.name == self.frozen else f"{self.frozen} frozen part, {self.name} training"

    def _autocast(self, name: str):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def autocast(self):
        """For the trainable part, in training and evaluation."""
        return self._autocast(self.name)

    def frozen_autocast(self):
        """For the frozen prefix, whose outputs may be cached."""
        return self._autocast(self.frozen)

    def scaler(self):
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def cpu_has_native_bf16() -> bool:
    """bf16 autocast pays off only where the CPU computes bf16 itself (AVX512-BF16 or AMX): measured 2-3x
    for MobileNetV2 and VGG-16 forward passes here; emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# Stored feature dtype per precision. bf16 outputs are kept bit for bit as int16 (numpy has no bf16),
# so reading them back gives exactly what the prefix computed.
STORE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.int16}


def to_stored(features: torch.Tensor, precision: str) -> np.ndarray:
    if precision == "bf16":
        return features.to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return features.to(torch.float16 if precision == "fp16" else torch.float32).cpu().numpy()


def from_stored(array: np.ndarray, precision: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if precision == "bf16" else tensor


class ImageSource:
    def __init__(self, images: np.ndarray, model, cut: int, mean, std, augment: BatchAugment,
                 device: torch.device, precision: Precision):
        self.images, self.model, self.cut = images, model, cut
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.augment, self.device, self.precision = augment, device, precision
        self.description = ("frozen part computed every batch" if cut > 0 else "whole backbone trains")

    def batch(self, index: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        x = to_float(self.images[np.sort(index)][np.argsort(np.argsort(index))], self.device)
        if generator is not None and self.augment.active:
            x = self.augment(x, generator)
        x = normalize(x, self.mean, self.std)
        if self.cut == 0:
            return x
        # no_grad, not inference_mode: the output feeds the trainable part, which autograd tracks
        with torch.no_grad(), self.precision.frozen_autocast():
            return self.model.forward_prefix(x, self.cut).float()


class FeatureSource:
    """Stored prefix outputs: a plain row for every image, extra rows (views) for training images."""

    def __init__(self, features: np.ndarray, plain_row: np.ndarray, extra_rows: np.ndarray, views: str,
                 device: torch.device, description: str, precision: str = "fp32"):
        self.features = features      # (rows, C, H, W)
        self.precision = precision
        self.plain_row = plain_row    # store index -> row of its plain view
        self.extra_rows = extra_rows  # (extra views, store index) -> row
        self.views = views            # 'plain' | 'flip' | 'random'
        self.device = device
        self.description = description

    def batch(self, index: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None or self.views == "plain":
            rows = self.plain_row[index]
        elif self.views == "flip":
            flips = BatchAugment.draw_flips(len(index), generator).numpy()
            rows = np.where(flips, self.extra_rows[0, index], self.plain_row[index])
        else:
            view = torch.randint(self.extra_rows.shape[0], (len(index),), generator=generator).numpy()
            rows = self.extra_rows[view, index]
        order = np.argsort(rows)  # read the memory map in file order, then put rows back in batch order
        z = np.empty((len(rows),) + self.features.shape[1:], dtype=self.features.dtype)
        z[order] = self.features[rows[order]]
        z = from_stored(z, self.precision).to(self.device).float()
        return z.contiguous(memory_format=torch.channels_last)


def prefix_fingerprint(model, cut: int) -> str:
    """Hash of the frozen prefix's weights: any weight source (ImageNet, seed, file) gets its own cache."""
    digest = hashlib.sha256()
    for name, tensor in model.backbone.features[:cut].state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def open_feature_source(model, cut: int, images: np.ndarray, store_key: str, index: np.ndarray,
                        train_index: np.ndarray, mean, std, augment: BatchAugment, cache_views: int, seed: int,
                        device: torch.device, precision: Precision, cache_dir: Path, batch_size: int,
                        progress: bool = True, group: Dist | None = None) -> FeatureSource:
    """Compute (or reopen) the frozen prefix's output: plain for `index`, extra views for `train_index`."""
    if not augment.active:
        views, extra, description = "plain", 0, "features cached (no augmentation)"
    elif augment.flip_only:
        views, extra, description = "flip", 1, "features cached as plain and flipped views (exact for flip)"
    else:
        views, extra = "random", cache_views
        description = (f"features cached as {cache_views} augmented views per training image, one drawn per "
                       f"image and epoch (--cache-views {cache_views}): augmentation is not fresh each epoch")
    store_dtype = STORE_DTYPES[precision.frozen]
    key_text = json.dumps([store_key, prefix_fingerprint(model, cut), cut, list(mean), list(std), views, extra,
                           str(augment.__dict__), seed if views == "random" else 0, precision.frozen,
                           hashlib.sha256(index.tobytes() + b"|" + train_index.tobytes()).hexdigest()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]

    plain_row = np.full(len(images), -1, dtype=np.int64)
    plain_row[index] = np.arange(len(index))
    extra_rows = np.full((extra, len(images)), -1, dtype=np.int64)
    jobs = [(0, index)]  # (view, store indices), rows assigned in job order
    for v in range(extra):
        extra_rows[v, train_index] = len(index) + v * len(train_index) + np.arange(len(train_index))
        jobs.append((v + 1, train_index))
    shape = (len(index) + extra * len(train_index),) + _prefix_shape(model, cut, images.shape[1], device)

    final = Path(cache_dir) / "features" / key
    group = group or Dist()
    if not (final / "meta.json").is_file():
        _build_features(final, key_text, shape, store_dtype, jobs, images, model, cut, mean, std, augment, views,
                        seed, device, precision, batch_size, progress, group)
    else:
        description += ", reused from cache"
    group.barrier()  # nobody trains on a cache that is still being written
    feats = np.memmap(final / "features.bin", dtype=store_dtype, mode="r", shape=shape)
    return FeatureSource(feats, plain_row, extra_rows, views, device, description, precision.frozen)


def _build_features(final: Path, key_text: str, shape, store_dtype, jobs, images, model, cut, mean, std,
                    augment, views, seed, device, precision, batch_size, progress, group: Dist) -> None:
    """Fill the feature file batch by batch; with several processes on a machine, each takes every
    local_world-th batch of one shared file, and local rank 0 publishes it when all are done."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if group.active:
        building = final.parent / f"{final.name}.building-{socket.gethostname()}"
        if group.is_local_main:
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            np.memmap(building / "features.bin", dtype=store_dtype, mode="w+", shape=shape).flush()
        group.barrier()
    else:
        building = Path(tempfile.mkdtemp(prefix=f"{final.name}.building-", dir=final.parent))
    try:
        mode = "r+" if group.active else "w+"
        feats = np.memmap(building / "features.bin", dtype=store_dtype, mode=mode, shape=shape)
        mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        generator = torch.Generator().manual_seed(seed + 7919)
        was_training = model.training
        model.eval()
        bar = tqdm(total=shape[0], desc="caching frozen features", unit="img", disable=not progress, leave=False)
        row, number = 0, 0
        for view, index in jobs:
            for start in range(0, len(index), batch_size):
                batch = index[start:start + batch_size]
                x = to_float(images[batch], device)
                if view > 0 and views == "flip":
                    x = x.flip(3)
                elif view > 0:
                    x = augment(x, generator)  # drawn on every rank, so each view is the same whoever computes it
                if number % group.local_world == group.local_rank:
                    x = normalize(x, mean_t, std_t)
                    with torch.inference_mode(), precision.frozen_autocast():
                        feats[row:row + len(batch)] = to_stored(model.forward_prefix(x, cut), precision.frozen)
                row += len(batch)
                number += 1
                bar.update(len(batch))
        bar.close()
        model.train(was_training)
        feats.flush()
        del feats
        group.barrier()
        if group.is_local_main:
            (building / "meta.json").write_text(json.dumps({"key": key_text, "shape": list(shape)}))
            try:
                os.rename(building, final)
            except OSError:  # built meanwhile by another process: use theirs
                shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        if not group.active:
            shutil.rmtree(building, ignore_errors=True)
        raise


def _prefix_shape(model, cut: int, size: int, device: torch.device) -> tuple[int, ...]:
    with torch.inference_mode():
        was = model.training
        model.eval()
        shape = tuple(model.forward_prefix(torch.zeros(1, 3, size, size, device=device), cut).shape[1:])
        model.train(was)
    return shape
