"""Where the trainable part of the model gets its inputs: computed now, or read from the feature cache.

The model is split at a cut: `features[:cut]` is frozen (`FrozenPart`), the rest trains. Both sources hand the
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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetl.data.augment import BatchAugment, read_rows, to_float
from facetl.data.integrity import building_prefix, file_digest, problem_with, remove_stale_builds
from facetl.data.store import ImageStore
from facetl.preprocessing import Preprocessing
from facetl.runtime import Runtime
from facetl.progress import progress_bar


# Stored feature dtype per precision. bf16 outputs are kept bit for bit as int16 (numpy has no bf16),
# so reading them back gives exactly what the prefix computed.
STORE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.int16}


def to_stored(features: torch.Tensor, precision: str) -> np.ndarray:
    if precision == "bf16":
        return features.to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return features.to(torch.float16 if precision == "fp16" else torch.float32).cpu().numpy()


def from_stored(array: np.ndarray | torch.Tensor, precision: str) -> torch.Tensor:
    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    return tensor.view(torch.bfloat16) if precision == "bf16" else tensor


@dataclass(frozen=True)
class FrozenPart:
    """The model's frozen prefix, `features[:cut]`: what the feature cache stores the output of."""

    model: torch.nn.Module        # anything with forward_prefix(x, cut) and backbone.features
    cut: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_prefix(x, self.cut)

    def fingerprint(self) -> str:
        """Hash of the prefix's weights: any weight source (ImageNet, seed, file) gets its own cache."""
        digest = hashlib.sha256()
        for name, tensor in self.model.backbone.features[:self.cut].state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def output_shape(self, size: int, device: torch.device) -> tuple[int, ...]:
        with torch.inference_mode():
            was = self.model.training
            self.model.eval()
            shape = tuple(self(torch.zeros(1, 3, size, size, device=device)).shape[1:])
            self.model.train(was)
        return shape


class ImageSource:
    """Batches straight from the decoded store: augmented, normalised, through the frozen part if any."""

    def __init__(self, images: np.ndarray, frozen: FrozenPart, preprocessing: Preprocessing, augment: BatchAugment,
                 runtime: Runtime):
        self.images, self.frozen = images, frozen
        self.preprocessing = preprocessing
        self.augment, self.device, self.precision = augment, runtime.device, runtime.precision
        self.description = ("frozen part computed every batch" if frozen.cut > 0 else "whole backbone trains")

    def batch(self, index: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        x = to_float(read_rows(self.images, index, self.device), self.device)
        return self.prepare(x, generator)

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A float batch in [0, 1] -> the trainable part's input."""
        if generator is not None and self.augment.active:
            x = self.augment(x, generator)
        x = self.preprocessing.normalize(x)
        if self.frozen.cut == 0:
            return x
        # no_grad, not inference_mode: the output feeds the trainable part, which autograd tracks
        with torch.no_grad(), self.precision.frozen_autocast():
            return self.frozen(x).float()


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
        self.resident: torch.Tensor | None = None  # the whole cache in GPU memory (hold_on_device)

    def batch(self, index: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None or self.views == "plain":
            rows = self.plain_row[index]
        elif self.views == "flip":
            flips = BatchAugment.draw_flips(len(index), generator).numpy()
            rows = np.where(flips, self.extra_rows[0, index], self.plain_row[index])
        else:
            view = torch.randint(self.extra_rows.shape[0], (len(index),), generator=generator).numpy()
            rows = self.extra_rows[view, index]
        if self.resident is not None:  # held in GPU memory: gather there
            z = self.resident[torch.as_tensor(rows).to(self.device, non_blocking=True)]
        else:
            z = from_stored(read_rows(self.features, rows, self.device), self.precision).to(self.device,
                                                                                           non_blocking=True)
        return z.float().contiguous(memory_format=torch.channels_last)

    def hold_on_device(self) -> bool:
        """Copy the whole cache into GPU memory when it takes at most a third of what is free there: every batch is
        then gathered on the GPU, with no read of the file and no copy from the host. A CPU reads the memory map."""
        if self.device.type != "cuda" or self.features.nbytes > torch.cuda.mem_get_info(self.device)[0] / 3:
            return False
        resident = torch.empty(self.features.shape, dtype=from_stored(np.array(self.features[:1]), self.precision).dtype,
                               device=self.device)
        step = max(1, (256 << 20) // max(self.features[:1].nbytes, 1))  # 256 MiB at a time through host memory
        for start in range(0, len(self.features), step):
            resident[start:start + step] = from_stored(np.array(self.features[start:start + step]), self.precision)
        self.resident = resident
        self.description += ", held in GPU memory"
        return True


@dataclass(frozen=True)
class FeatureRequest:
    """Which rows of the store to cache prefix outputs for, and which views of the training rows."""

    store: ImageStore
    index: np.ndarray             # every image that needs a plain view (train, val, test)
    train_index: np.ndarray       # the images that also get augmented views
    augment: BatchAugment
    cache_views: int = 0          # augmented views per training image for jitter/rotate
    seed: int = 0

    def views(self) -> tuple[str, int, str]:
        """(kind, extra views per training image, a line for the log)."""
        if not self.augment.active:
            return "plain", 0, "features cached (no augmentation)"
        if self.augment.flip_only:
            return "flip", 1, "features cached as plain and flipped views (exact for flip)"
        return "random", self.cache_views, (
            f"features cached as {self.cache_views} augmented views per training image, one drawn per image and "
            f"epoch (--cache-views {self.cache_views}): augmentation is not fresh each epoch")


def open_feature_source(frozen: FrozenPart, request: FeatureRequest, preprocessing: Preprocessing,
                        runtime: Runtime, cache_dir: Path, batch_size: int = 64,
                        progress: bool = True) -> FeatureSource:
    """Compute (or reopen) the frozen prefix's output: plain for every image, extra views for training."""
    views, extra, description = request.views()
    precision = runtime.precision
    store_dtype = STORE_DTYPES[precision.frozen]
    index, train_index = request.index, request.train_index
    key_text = json.dumps([request.store.key, frozen.fingerprint(), frozen.cut, list(preprocessing.mean),
                           list(preprocessing.std), views, extra, str(request.augment.__dict__),
                           request.seed if views == "random" else 0, precision.frozen,
                           hashlib.sha256(index.tobytes() + b"|" + train_index.tobytes()).hexdigest()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]

    images = request.store.images
    plain_row = np.full(len(images), -1, dtype=np.int64)
    plain_row[index] = np.arange(len(index))
    extra_rows = np.full((extra, len(images)), -1, dtype=np.int64)
    jobs = [(0, index)]  # (view, store indices), rows assigned in job order
    for v in range(extra):
        extra_rows[v, train_index] = len(index) + v * len(train_index) + np.arange(len(train_index))
        jobs.append((v + 1, train_index))
    shape = (len(index) + extra * len(train_index),) + frozen.output_shape(images.shape[1], runtime.device)

    final = Path(cache_dir) / "features" / key
    if runtime.group.is_local_main:
        remove_stale_builds(final.parent)
        _discard_if_damaged(final)
    runtime.group.barrier()
    if not (final / "meta.json").is_file():
        plan = _FeatureJob(final, key_text, shape, store_dtype, jobs, views)
        _build_features(plan, frozen, request, preprocessing, runtime, batch_size, progress)
    else:
        description += ", reused from cache"
    runtime.group.barrier()  # nobody trains on a cache that is still being written
    feats = np.memmap(final / "features.bin", dtype=store_dtype, mode="r", shape=shape)
    source = FeatureSource(feats, plain_row, extra_rows, views, runtime.device, description, precision.frozen)
    source.hold_on_device()
    return source


def _discard_if_damaged(final: Path) -> None:
    if not (final / "meta.json").is_file():
        return
    try:
        problem = problem_with(final / "features.bin", json.loads((final / "meta.json").read_text()).get("file"))
    except (OSError, ValueError) as exc:
        problem = f"its meta.json is unreadable ({exc})"
    if problem:
        warnings.warn(f"feature cache {final} is damaged: {problem}; rebuilding it")
        shutil.rmtree(final, ignore_errors=True)


@dataclass(frozen=True)
class _FeatureJob:
    final: Path                   # the cache entry's folder once complete
    key_text: str
    shape: tuple
    dtype: type
    jobs: list                    # (view number, store indices) in row order
    views: str


def _build_features(job: _FeatureJob, frozen: FrozenPart, request: FeatureRequest, preprocessing: Preprocessing,
                    runtime: Runtime, batch_size: int, progress: bool) -> None:
    """Fill the feature file batch by batch; with several processes on a machine, each takes every
    local_world-th batch of one shared file, and local rank 0 publishes it when all are done."""
    group, final = runtime.group, job.final
    final.parent.mkdir(parents=True, exist_ok=True)
    if group.active:
        # one name for all ranks of this machine: their launcher's pid (alive while they run) and the host
        building = final.parent / f"{final.name}.building-{os.getppid()}-{socket.gethostname()}"
        if group.is_local_main:
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            np.memmap(building / "features.bin", dtype=job.dtype, mode="w+", shape=job.shape).flush()
        group.barrier()
    else:
        building = Path(tempfile.mkdtemp(prefix=building_prefix(final.name), dir=final.parent))
    try:
        feats = np.memmap(building / "features.bin", dtype=job.dtype, mode="r+" if group.active else "w+",
                          shape=job.shape)
        _compute_features(feats, job, frozen, request, preprocessing, runtime, batch_size, progress)
        feats.flush()
        del feats
        group.barrier()
        if group.is_local_main:
            meta = {"key": job.key_text, "shape": list(job.shape), "file": file_digest(building / "features.bin")}
            (building / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(building, final)
            except OSError:  # built meanwhile by another process: use theirs
                shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        if not group.active:
            shutil.rmtree(building, ignore_errors=True)
        raise


def _compute_features(feats: np.ndarray, job: _FeatureJob, frozen: FrozenPart, request: FeatureRequest,
                      preprocessing: Preprocessing, runtime: Runtime, batch_size: int, progress: bool) -> None:
    group, device, precision = runtime.group, runtime.device, runtime.precision
    generator = torch.Generator().manual_seed(request.seed + 7919)
    was_training = frozen.model.training
    frozen.model.eval()
    bar = progress_bar(total=job.shape[0], desc="caching frozen features", unit="img", enabled=progress)
    row, number = 0, 0
    for view, index in job.jobs:
        for start in range(0, len(index), batch_size):
            batch = index[start:start + batch_size]
            x = to_float(read_rows(request.store.images, batch, device), device)
            if view > 0 and job.views == "flip":
                x = x.flip(3)
            elif view > 0:
                x = request.augment(x, generator)  # drawn on every rank, so each view is the same whoever computes it
            if number % group.local_world == group.local_rank:
                x = preprocessing.normalize(x)
                with torch.inference_mode(), precision.frozen_autocast():
                    feats[row:row + len(batch)] = to_stored(frozen(x), precision.frozen)
            row += len(batch)
            number += 1
            bar.update(len(batch))
    bar.close()
    frozen.model.train(was_training)
