"""FaceClassifier = backbone + head, built from a config; split at a cut point for the feature cache."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from facetl.models.heads import build_head
from facetl.models.registry import create_backbone
from facetl.models.strategies import Plan, apply_strategy
from facetl.models.weights import WeightsUnavailable, read_state_dict


class FaceClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, outputs: int, weights_note: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.outputs = outputs
        self.weights_note = weights_note       # what the backbone started from, for logs and reports
        self.frozen_batchnorm: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward_prefix(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """The frozen part: features[:cut]; its output is what the feature cache stores."""
        return self.backbone.features[:cut](x)

    def forward_suffix(self, z: torch.Tensor, cut: int) -> torch.Tensor:
        return self.head(self.backbone.features[cut:](z))

    def train(self, mode: bool = True) -> "FaceClassifier":
        super().train(mode)
        for module in self.frozen_batchnorm:
            module.eval()  # frozen layers keep their running statistics
        return self


class TrainablePart(nn.Module):
    """features[cut:] + head as one module: what the optimiser and DistributedDataParallel see."""

    def __init__(self, model: FaceClassifier, cut: int):
        super().__init__()
        self.rest = model.backbone.features[cut:]
        self.head = model.head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.rest(z))


def resolve_img_size(config, backbone_input_size: int) -> int:
    return config.img_size or backbone_input_size


def build_model(config, num_classes: int, log=print) -> tuple[FaceClassifier, Plan, int]:
    """Build backbone (with weights), head and strategy; return the model, its plan and image size."""
    weights = config.weights
    if weights == "auto":
        try:
            backbone = create_backbone(config.backbone, "imagenet")
            weights = "imagenet"
        except WeightsUnavailable as exc:
            log(f"no ImageNet weights: {exc}; training from random initialisation (no pretraining)")
            backbone = create_backbone(config.backbone, "none")
            weights = "none"
    else:
        backbone = create_backbone(config.backbone, weights)
    note = {"imagenet": "ImageNet pretrained", "none": "no pretraining"}.get(weights, f"weights from {weights}")
    img_size = resolve_img_size(config, backbone.input_size)
    outputs = 1 if num_classes == 2 else num_classes
    head = build_head(config.head, backbone, img_size, outputs, config.dropout)
    model = FaceClassifier(backbone, head, outputs, note)
    if weights not in ("imagenet", "none"):
        _carry_head(model, weights)
    plan = apply_strategy(model, config.strategy)
    return model, plan, img_size


def _carry_head(model: FaceClassifier, path: str) -> None:
    """A facetl run as --weights also passes on its head when the shapes fit (same task, same head)."""
    if not Path(path).is_dir() and not str(path).endswith(".pt"):
        return
    state = read_state_dict(path)
    own = model.head.state_dict()
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if head and all(k in own and own[k].shape == v.shape for k, v in head.items()) and len(head) == len(own):
        model.head.load_state_dict(head)
        print(f"head: carried over from {path}", file=sys.stderr)
