"""Autocast settings for the machine that runs: one for the frozen part, one for the part that trains."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from facetl.errors import FacetlError


class Precision:
    """`auto` picks, per device, what measured fastest here: on a CPU with native bf16, bf16 for the frozen
    part (2-3x faster forward passes) but fp32 for training (a bf16 training step of MobileNetV2's last
    block took 56 ms against 29 ms in fp32); on CUDA, bf16 (or fp16 with a gradient scaler) for both.
    """

    def __init__(self, name: str, device: torch.device):
        if name == "fp16" and device.type != "cuda":
            raise FacetlError("--precision fp16 needs a CUDA GPU; use bf16, fp32 or auto")
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
