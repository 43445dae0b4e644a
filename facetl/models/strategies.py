"""Which backbone layers train: frozen, last-block, from:K, full.

Layers are the backbone's leaf modules in forward order (conv, batch norm, activation, ...), numbered
from 0; `facetl backbones NAME` prints them. `from:K` trains layer K onward; `from:NAME` trains from
the module NAME (e.g. `features.14`) onward.

Frozen batch-norm layers are replaced by frozen equivalents whose statistics and affine parameters are
buffers (timm's `freeze_batch_norm_2d`, as timm's `freeze` does). Overriding `train()` on one module is
not enough: a `.train()` call on any sub-module, such as the part the optimiser and DDP see, would
switch them back to updating their statistics. A frozen layer that is replaced cannot.
"""
from __future__ import annotations

from dataclasses import dataclass

from timm.layers import freeze_batch_norm_2d, unfreeze_batch_norm_2d
from torch import nn

from facetl.errors import FacetlError


@dataclass
class Plan:
    strategy: str
    first_trainable: int | None   # index of the first trainable layer; None when the backbone is frozen
    cut: int                      # features[:cut] is wholly frozen, so its output can be cached
    trainable_params: int
    total_params: int
    trainable_batchnorm: bool = False  # batch-norm layers whose statistics training updates

    def describe(self) -> str:
        return (f"strategy {self.strategy}: {self.trainable_params:,} of {self.total_params:,} parameters "
                f"trainable; frozen prefix features[:{self.cut}]")


def backbone_layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"features.{name}", m) for name, m in backbone.features.named_modules()
            if name and not list(m.children())]


def first_trainable_layer(backbone: nn.Module, strategy: str) -> int | None:
    layers = backbone_layers(backbone)
    if strategy == "frozen":
        return None
    if strategy == "full":
        return 0
    if strategy == "last-block":
        if hasattr(backbone, "last_block_parameters"):
            wanted = backbone.last_block_parameters()
            for i, (name, module) in enumerate(layers):
                if any(f"{name}.{p}" in wanted for p, _ in module.named_parameters()):
                    return i
            raise FacetlError(f"cannot find the last block of {backbone.name}")
        start = f"features.{backbone.block_starts[-1]}"
        return next(i for i, (name, _) in enumerate(layers) if name == start or name.startswith(start + "."))
    if strategy.startswith("from:"):
        where = strategy[len("from:"):]
        if where.lstrip("-").isdigit():
            k = int(where)
            if not 0 <= k < len(layers):
                raise FacetlError(f"strategy {strategy}: {backbone.name} has layers 0 to {len(layers) - 1} "
                                  f"(list them with: facetl backbones {backbone.name})")
            return k
        for i, (name, _) in enumerate(layers):
            if name == where or name.startswith(where + "."):
                return i
        raise FacetlError(f"strategy {strategy}: {backbone.name} has no module {where!r} "
                          f"(list them with: facetl backbones {backbone.name})")
    raise FacetlError(f"unknown strategy {strategy!r}; choose frozen, last-block, from:K or full")


def apply_strategy(model: nn.Module, strategy: str) -> Plan:
    """Set requires_grad on `model` (a FaceClassifier) and replace its frozen batch-norm layers. Applied again
    with a strategy that trains more (gradual unfreezing), it turns the newly trained batch norm back into
    ordinary batch norm with the same values."""
    backbone = model.backbone
    layers = backbone_layers(backbone)
    first = first_trainable_layer(backbone, strategy)
    position = {id(module): i for i, (_, module) in enumerate(layers)}
    frozen_bn, thawed_bn = [], []
    # a module's own parameters go with the first layer inside it: a layer is its own first layer; a container
    # with parameters of its own (timm's BatchNormAct2d, ConvNeXt's layer scale, ViT's class token) is not a
    # layer but must be frozen with the layers it holds
    for name, module in backbone.features.named_modules():
        if not name:
            continue
        start = min((position[id(m)] for m in module.modules() if id(m) in position), default=len(layers))
        trainable = first is not None and start >= first
        for p in module.parameters(recurse=False):
            p.requires_grad_(trainable)
        if not trainable and isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen_bn.append(name)
        if trainable and is_frozen_batchnorm(module):
            thawed_bn.append(name)
    for name in frozen_bn:
        freeze_batchnorm(backbone.features, name)
    for name in thawed_bn:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.features.get_submodule(parent_name) if parent_name else backbone.features
        setattr(parent, child, unfreeze_batch_norm_2d(getattr(parent, child)))
    cut = len(backbone.features) if first is None else int(layers[first][0].split(".")[1])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for m in model.modules() if is_frozen_batchnorm(m) for b in (m.weight, m.bias))
    trainable_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return Plan(strategy, first, cut, trainable, total, trainable_bn)


def freeze_batchnorm(root: nn.Module, name: str) -> None:
    """Replace batch-norm layer `name` under `root` by its frozen equivalent (same values, now buffers)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    layer = getattr(parent, child)
    frozen = freeze_batch_norm_2d(layer)
    if frozen is layer:  # timm freezes 2-D batch norm (plain, sync and with activation) only
        raise FacetlError(f"cannot freeze {type(layer).__name__} layer features.{name}: only 2-D batch norm "
                          "can be frozen; choose a strategy that trains it (e.g. --strategy full)")
    frozen.train(layer.training)
    setattr(parent, child, frozen)


def is_frozen_batchnorm(module: nn.Module) -> bool:
    return type(module).__name__ in ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")
