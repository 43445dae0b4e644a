"""Backbone adapters: one contract for every feature extractor facetl trains on.

A backbone is an `nn.Module` whose `features` is an `nn.Sequential` of units run in order, so that the
frozen-feature cache can store the output of any prefix `features[:k]`. It also says:
  - `block_starts`: where each block starts in `features` (the last one is what `last-block` trains);
  - `channels`: channels of the final feature map;
  - `flat_pool`: the pooling the MLP heads flatten (VGG keeps its 7x7 grid: 25088 features);
  - `mean`, `std`, `input_size`: the preprocessing its pretrained weights expect (and `colour`, `framing`).
Only this file reaches inside torchvision and timm models.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from facetl.models.registry import register_backbone
from facetl.models.weights import load_imagenet_torchvision, load_imagenet_timm, load_state_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224  # what torchvision's ImageNet weights (every adapter registered here) expect


@dataclass(frozen=True)
class PretrainedInput:
    """The input a backbone's pretrained weights expect: side in pixels, and the per-channel mean and std."""
    size: int = IMAGENET_SIZE
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


class Backbone(nn.Module):
    colour = "rgb"                # the colour its pretrained weights expect: rgb | grey
    framing: str | None = None    # the face crop they were trained on (a FaceAlignment template); None: any

    def __init__(self, name: str, features: nn.Sequential, block_starts: list[int], channels: int,
                 flat_pool: nn.Module, expects: PretrainedInput = PretrainedInput()):
        super().__init__()
        self.name = name
        self.features = features
        self.block_starts = block_starts
        self.channels = channels
        self.flat_pool = flat_pool
        self.mean, self.std, self.input_size = tuple(expects.mean), tuple(expects.std), expects.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def flat_dim(self, img_size: int) -> int:
        # eval mode: a train-mode probe would move batch-norm running statistics (pretrained ones too)
        # towards those of a blank image, and fails outright on a 1x1 feature map
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                probe = self.features(torch.zeros(1, 3, img_size, img_size))
                return self.flat_pool(probe).flatten(1).shape[1]
        finally:
            self.train(was_training)


def _torchvision(name: str, weights: str, features: nn.Sequential, weights_enum, block_starts, channels, flat_pool):
    if weights == "imagenet":
        state = load_imagenet_torchvision(name, weights_enum)
        features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    backbone = Backbone(name, features, block_starts, channels, flat_pool)
    if weights not in ("imagenet", "none"):
        load_state_file(backbone, weights)
    return backbone


def _vgg_features(config: str) -> nn.Sequential:
    """VGG's convolutional part alone: building the whole model would allocate (then drop) a 124M-parameter
    classifier. Initialised as torchvision's VGG initialises its convolutions."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs[config], batch_norm=False)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(module.bias, 0)
    return features


@register_backbone
def vgg16(weights: str) -> Backbone:
    from torchvision.models import VGG16_Weights

    # blocks end at each max-pool: features[0:5], [5:10], [10:17], [17:24], [24:31] ('last block' = [24:])
    return _torchvision("vgg16", weights, _vgg_features("D"), VGG16_Weights.IMAGENET1K_V1, [0, 5, 10, 17, 24], 512,
                        nn.AdaptiveAvgPool2d((7, 7)))


@register_backbone
def vgg19(weights: str) -> Backbone:
    from torchvision.models import VGG19_Weights

    return _torchvision("vgg19", weights, _vgg_features("E"), VGG19_Weights.IMAGENET1K_V1, [0, 5, 10, 19, 28], 512,
                        nn.AdaptiveAvgPool2d((7, 7)))


@register_backbone
def mobilenet_v2(weights: str) -> Backbone:
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2 as build

    # blocks are the resolution stages (each starts at a stride-2 unit), as VGG's blocks end at a pool;
    # the last block, features[14:], holds the last three 160-channel units, the 320 unit and the 1x1 conv.
    return _torchvision("mobilenet_v2", weights, build(weights=None).features, MobileNet_V2_Weights.IMAGENET1K_V1,
                        [0, 2, 4, 7, 14], 1280, nn.AdaptiveAvgPool2d(1))


def timm_pretrained_input(name: str) -> tuple[int, tuple, tuple]:
    """Input size, mean and std of timm model `name`'s pretrained weights, from timm's pretrained config alone
    (no network built): the numbers TimmBackbone reads off the model it builds."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return _input_of(cfg.to_dict() if cfg is not None else {})


def _input_of(cfg: dict) -> tuple[int, tuple, tuple]:
    return (cfg.get("input_size", (3, IMAGENET_SIZE, IMAGENET_SIZE))[-1], tuple(cfg.get("mean", IMAGENET_MEAN)),
            tuple(cfg.get("std", IMAGENET_STD)))


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class TimmBackbone(Backbone):
    """Any timm model, as one unit: its blocks come from timm's own coarse parameter grouping."""

    def __init__(self, name: str, weights: str):
        import timm

        if weights == "imagenet":
            model = load_imagenet_timm(name)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=0)
        super().__init__(name, nn.Sequential(_TimmTrunk(model)), [0], model.num_features,
                         nn.AdaptiveAvgPool2d(1), PretrainedInput(*_input_of(model.pretrained_cfg)))
        if weights not in ("imagenet", "none"):
            load_state_file(self, weights)

    def last_block_parameters(self) -> set[str]:
        from timm.models import group_parameters

        model = self.features[0].model
        matcher = model.group_matcher(coarse=True)
        named = list(model.named_parameters())
        # timm renumbers its groups 0..n and files every parameter no pattern matches (neck, head: e.g.
        # convnext's head.norm, densenet's norm5) in the last one; a sentinel name marks that group so the
        # last block is the last real stage, not the head's norm alone
        unmatched = "\0unmatched"
        if isinstance(matcher, dict):
            named.append((unmatched, None))
        groups = group_parameters(SimpleNamespace(named_parameters=lambda: iter(named)), matcher)
        last = max(k for k, names in groups.items() if unmatched not in names)
        return {f"features.0.model.{n}" for n in groups[last]}
