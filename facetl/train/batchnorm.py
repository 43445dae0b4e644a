"""Precise batch-norm statistics: recomputed over training images before each validation.

A network trained from scratch for a few epochs keeps running statistics that are still mostly their
initial values (MobileNetV2's depthwise layers: running variance ~0.35 against a true batch variance of
~0.002 after 3 epochs on 800 images), so in eval mode every image gets the same output. Recomputing the
statistics with the current weights, as an exact average over a fixed set of training batches ("precise
BN", Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021), gives eval mode the statistics the weights
need. Pretrained backbones start from good statistics, so `auto` does this only without pretraining.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

PRECISE_BN_IMAGES = 4096  # enough batches for stable statistics; about a third of an epoch's cost at most


def precise_bn_wanted(setting: str, pretrained: bool, trainable_batchnorm: bool) -> bool:
    if not trainable_batchnorm or setting == "off":
        return False
    return setting == "on" or not pretrained


def recompute_batchnorm(part: nn.Module, source, train_index: np.ndarray, batch_size: int, precision,
                        seed: int) -> None:
    """Reset and recompute the running statistics of `part`'s batch-norm layers over plain (unaugmented)
    training images: the same seeded subset on every rank, so every rank ends with the same statistics."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(train_index)[:PRECISE_BN_IMAGES]
    batches = [chosen[i:i + batch_size] for i in range(0, len(chosen), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size // 2:
        batches = batches[:-1]  # a tiny last batch would give noisy statistics the same weight

    def inputs():
        for batch in batches:
            yield source.batch(batch, None)

    with torch.no_grad(), precision.autocast():
        update_bn(inputs(), part)
