"""When things change during a run: unfreezing stages, and the learning rate within each stage.

Both are pure functions of (epoch, position in the epoch), so a resumed run follows exactly the schedule an
uninterrupted one would: there is no scheduler state to save, and no stage to forget (the bug to avoid is
Lightning #6891, where a resume across an unfreezing step restored the wrong set of trainable layers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from facetl.config import TrainConfig, parse_unfreeze

ONE_CYCLE_RISE = 0.25          # fraction of a stage spent rising (torch's OneCycleLR pct_start is 0.3, fastai 0.25)
ONE_CYCLE_START = 1 / 25       # the cycle starts at lr/25 ...
ONE_CYCLE_END = 1 / 25 / 1e4   # ... and ends far below it, as torch's OneCycleLR and fastai's fit_one_cycle


@dataclass(frozen=True)
class Stage:
    first_epoch: int
    last_epoch: int
    strategy: str

    @property
    def epochs(self) -> int:
        return self.last_epoch - self.first_epoch + 1


def stages(config: TrainConfig) -> list[Stage]:
    """The run's stages; a run that is not gradual is one stage with its strategy."""
    if config.strategy != "gradual":
        return [Stage(1, config.epochs, config.strategy)]
    steps = parse_unfreeze(config.unfreeze) if config.unfreeze else [(1, "frozen")]
    ends = [epoch - 1 for epoch, _ in steps[1:]] + [config.epochs]
    return [Stage(first, last, strategy) for (first, strategy), last in zip(steps, ends)]


def stage_at(config: TrainConfig, epoch: int) -> Stage:
    return next(s for s in reversed(stages(config)) if s.first_epoch <= min(epoch, max(config.epochs, 1)))


def lr_factor(kind: str, progress: float, warmup: float = 0.0) -> float:
    """The learning rate, as a fraction of the peak, at `progress` (0..1) through a stage.
    `warmup`: the fraction of the stage spent rising linearly from 0 (cosine and none)."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "onecycle":
        if progress < ONE_CYCLE_RISE:
            return _cosine_between(ONE_CYCLE_START, 1.0, progress / ONE_CYCLE_RISE)
        return _cosine_between(1.0, ONE_CYCLE_END, (progress - ONE_CYCLE_RISE) / (1 - ONE_CYCLE_RISE))
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if kind == "cosine":
        return _cosine_between(1.0, 0.0, (progress - warmup) / (1 - warmup) if warmup < 1 else 1.0)
    return 1.0


def _cosine_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2
