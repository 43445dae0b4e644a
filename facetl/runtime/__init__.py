"""Where a command runs: device, precision and processes, chosen for the machine at hand.

Training records what it used (`RuntimeUsed` in the run record); evaluate, predict and anything that
reopens a run choose again for their own machine, so a run trained with fp16 on a GPU is usable on a
CPU-only laptop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from facetl.record import RuntimeUsed
from facetl.runtime.device import resolve_device
from facetl.runtime.distributed import Dist, init_distributed, shutdown_distributed
from facetl.runtime.precision import Precision

__all__ = ["Dist", "Precision", "Runtime", "resolve_device"]


@dataclass
class Runtime:
    device: torch.device
    precision: Precision
    group: Dist = field(default_factory=Dist)

    @classmethod
    def for_training(cls, device: str, precision: str) -> "Runtime":
        """Join the process group torchrun describes (a no-op alone), then pick this rank's device."""
        group, device_name = init_distributed(device)
        try:
            chosen = resolve_device(device_name)
            return cls(chosen, Precision(precision, chosen), group)
        except BaseException:
            shutdown_distributed(group)
            raise

    @classmethod
    def for_inference(cls, device: str = "auto", precision: str = "auto") -> "Runtime":
        chosen = resolve_device(device)
        return cls(chosen, Precision(precision, chosen))

    def used(self, has_frozen_part: bool) -> RuntimeUsed:
        frozen = self.precision.frozen if has_frozen_part else self.precision.name
        return RuntimeUsed(str(self.device), self.precision.name, frozen, self.group.world)

    def close(self) -> None:
        shutdown_distributed(self.group)
