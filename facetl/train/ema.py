"""--ema DECAY: an exponential moving average of the weights that train, used for validation, best.pt and the
final evaluation (timm's ModelEmaV3 does the same; this one follows facetl's unfreezing stages and resume).

Only tensors that train are averaged (parameters that require grad, statistics of trainable batch norm):
the frozen rest is constant, and averaging a frozen VGG would cost more than the step it follows.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from facetl.train.checkpoints import fixed_keys


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.average: dict[str, torch.Tensor] = {}
        self.live: dict[str, torch.Tensor] = {}
        self.follow(model)

    def follow(self, model: nn.Module) -> None:
        """Start averaging tensors that began to train (an unfreezing step), from their current values. The
        model's tensors are looked up here, not every step: the optimiser and load_state_dict change them in
        place, and only an unfreezing step replaces modules (thawed batch norm)."""
        fixed = fixed_keys(model)
        self.live = {name: value for name, value in model.state_dict().items() if name not in fixed}
        for name, value in self.live.items():
            if name not in self.average:
                self.average[name] = value.detach().clone()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # early on the average follows the weights closely (timm's warm-up), so it is not stuck near the start
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, average in self.average.items():
            if average.is_floating_point():
                average.lerp_(self.live[name], 1 - decay)
            else:
                average.copy_(self.live[name])

    @contextmanager
    def applied(self, model: nn.Module):
        """The model holds the averaged weights inside the block, its own again after it."""
        live = model.state_dict()
        kept = {name: live[name].detach().clone() for name in self.average}
        model.load_state_dict(self.average, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(kept, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.average.update({k: v.clone() for k, v in state["average"].items()})
