"""Choosing the device a command runs on: what this machine has, not what the run was trained on."""
from __future__ import annotations

import torch

from facetl.errors import FacetlError

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FacetlError(f"--device {name}: no CUDA GPU is available (use --device cpu or auto)")
    if name == "mps" and not mps_available():
        raise FacetlError("--device mps: Apple's MPS is not available (use --device cpu or auto)")
    if name.split(":")[0] not in DEVICES:
        raise FacetlError(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    return torch.device(name)
