"""The optimiser over what trains: parameter groups with discriminative learning rates and weight decay.

Groups are (depth, decayed?) pairs. Depth 0 is the head; the backbone's last block is depth 1, the block
before it depth 2, and so on (`backbone.block_starts`); a group's peak LR is lr * lr_decay ** depth, as timm's
layer-wise LR decay. Biases and normalisation weights (1-D tensors) get no weight decay, as in timm and fastai.
"""
from __future__ import annotations

import bisect

import torch
from torch import nn


def parameter_groups(model: nn.Module, lr: float, lr_decay: float, weight_decay: float) -> list[dict]:
    starts = list(model.backbone.block_starts)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = 0
        if name.startswith("backbone.features."):
            unit = int(name.split(".")[2])
            depth = len(starts) - max(bisect.bisect_right(starts, unit) - 1, 0)
        decayed = param.ndim > 1
        group = groups.setdefault((depth, decayed), {
            "params": [], "base_lr": lr * lr_decay ** depth, "lr": lr * lr_decay ** depth,
            "weight_decay": weight_decay if decayed else 0.0, "depth": depth})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def make_optimizer(kind: str, groups: list[dict]) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=0.9, nesterov=True)
    # on a GPU, one fused kernel updates every tensor (instead of a few launches per tensor); the CPU keeps
    # the default, whose figures the CPU benchmarks measured
    fused = {"fused": True} if on_cuda(groups) else {}
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], **fused)
    return torch.optim.Adam(groups, lr=groups[0]["lr"], **fused)  # the studies' optimiser; weight decay there is L2


def on_cuda(groups: list[dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def carry_state(old: torch.optim.Optimizer | None, new: torch.optim.Optimizer) -> None:
    """Moments of parameters that trained before an unfreezing step go on in the new optimiser."""
    if old is None:
        return
    for group in new.param_groups:
        for param in group["params"]:
            if param in old.state:
                new.state[param] = old.state[param]


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Every group at its peak LR times `factor`; returns the head's LR (for the history)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"] if optimizer.param_groups[0]["depth"] == 0 else \
        max(g["lr"] for g in optimizer.param_groups)


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    peaks = sorted({(g["depth"], g["base_lr"]) for g in optimizer.param_groups})
    fused = " (fused)" if optimizer.defaults.get("fused") else ""
    if len({lr for _, lr in peaks}) == 1:
        return f"peak lr {peaks[0][1]:.3g}{fused}"
    return "peak lr " + ", ".join(("head" if d == 0 else f"block -{d}") + f" {lr:.3g}" for d, lr in peaks) + fused
