"""The learning-rate range test (Smith 2015; fastai's lr_find): train a few batches while the LR grows
exponentially, watch the loss, and suggest the LR where it falls fastest.

The model and optimiser are put back as they were afterwards, so `--lr auto` trains from the same start.
The LR of every parameter group moves together, keeping the discriminative ratios (--lr-decay) between them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from facetl.train.loop import NonFiniteLoss, Optimisation, train_step

SMOOTHING = 0.98       # exponential smoothing of the loss, debiased (fastai's)
DIVERGED = 4.0         # stop once the smoothed loss is this many times its minimum


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    steepest_at: int       # index of the suggestion in lrs
    rule: str              # how it was chosen

    def rows(self) -> list[list[str]]:
        return [[f"{lr:.6g}", f"{loss:.6f}", f"{s:.6f}"] for lr, loss, s in zip(self.lrs, self.losses, self.smoothed)]


@dataclass(frozen=True)
class LRRange:
    """The LRs a range test sweeps: `steps` of them, from `start` to `end`, evenly spaced in log."""
    start: float = 1e-7
    end: float = 10.0
    steps: int = 100


def range_test(opt: Optimisation, source, labels: np.ndarray, index: np.ndarray, seed: int,
               sweep: LRRange = LRRange(), wrap_steps: Steps = iter) -> RangeTest:
    start, end, steps = sweep.start, sweep.end, sweep.steps
    model_state = copy.deepcopy(opt.model.state_dict())
    optimizer_state = copy.deepcopy(opt.optimizer.state_dict())
    head_peak = opt.optimizer.param_groups[0]["base_lr"]
    rng = np.random.default_rng([seed, 7])
    order = np.concatenate([rng.permutation(index) for _ in range(math.ceil(steps * opt.batch_size / len(index)))])
    generator = torch.Generator().manual_seed(seed)
    lrs, losses, smoothed, average, best = [], [], [], 0.0, math.inf
    opt.model.eval()
    opt.part.train()
    try:
        for i in wrap_steps(range(steps)):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in opt.optimizer.param_groups:
                group["lr"] = lr * group["base_lr"] / head_peak
            batch = order[i * opt.batch_size:(i + 1) * opt.batch_size]
            z = source.batch(batch, generator)
            try:
                loss, _ = train_step(opt, z, torch.as_tensor(labels[batch], device=z.device), i + 1)
            except NonFiniteLoss:
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss.item()
            value = average / (1 - SMOOTHING ** (i + 1))
            lrs.append(lr)
            losses.append(loss.item())
            smoothed.append(value)
            best = min(best, value)
            if i > 10 and value > DIVERGED * best:
                break
    finally:
        opt.model.load_state_dict(model_state)
        opt.optimizer.load_state_dict(optimizer_state)
    at, rule = steepest_descent(lrs, smoothed)
    return RangeTest(lrs, losses, smoothed, lrs[at] if lrs else start, at, rule)


def steepest_descent(lrs: list[float], smoothed: list[float]) -> tuple[int, str]:
    """The suggested LR's index and the rule that chose it. With a clear valley (the smoothed loss falls by a
    tenth or more), where it falls fastest per decade of LR before its minimum (fastai's 'steep'); on a flat
    curve (a network from random weights learns little in 100 steps), a tenth of the LR at which the loss starts
    to climb (the divergence edge). The first tenth of the steps is left out: the debiased average still swings."""
    if len(lrs) < 5:
        return 0, "too few steps"
    skip = max(1, len(lrs) // 10)
    lowest = skip + int(np.argmin(smoothed[skip:]))
    if smoothed[skip] - smoothed[lowest] >= 0.1 * smoothed[skip] and lowest - skip >= 3:
        slopes = np.gradient(np.asarray(smoothed[:lowest + 1]), np.log10(np.asarray(lrs[:lowest + 1])))
        return skip + int(np.argmin(slopes[skip:])), "steepest descent"
    edge = next((i for i in range(lowest, len(lrs)) if smoothed[i] > 1.05 * smoothed[lowest]), len(lrs) - 1)
    return int(np.argmin(np.abs(np.log(np.asarray(lrs)) - np.log(lrs[edge] / 10)))), "a tenth of where the loss climbs"
