"""FaceClassifier = backbone + head, built from a config; split at a cut point for the feature cache.

`build_model` decides, in this order: where the weights come from, the preprocessing those weights
expect (a facetl run passes on its own, flags override with a warning), the head, and what trains.
`resolve_preprocessing` answers the second question alone, without building a network (timm's
`resolve_data_config`). `rebuild_model` makes the same structure again from a run's record, for loading its
checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facetl.config import parse_unfreeze
from facetl.errors import FacetlError
from facetl.models.factory import create_backbone, pretrained_framing, pretrained_input
from facetl.models.packaged import PACKAGED
from facetl.models.heads import build_head
from facetl.models.strategies import Plan, apply_strategy
from facetl.models.weights import WeightsUnavailable, load_backbone_state, read_weights
from facetl.preprocessing import Preprocessing
from facetl.record import RunRecord, StartingWeights


class FaceClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, outputs: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward_prefix(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """The frozen part: features[:cut]; its output is what the feature cache stores."""
        return self.backbone.features[:cut](x)

    def forward_suffix(self, z: torch.Tensor, cut: int) -> torch.Tensor:
        return self.head(self.backbone.features[cut:](z))


class TrainablePart(nn.Module):
    """features[cut:] + head as one module: what the optimiser and DistributedDataParallel see."""

    def __init__(self, model: FaceClassifier, cut: int):
        super().__init__()
        self.rest = model.backbone.features[cut:]
        self.head = model.head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.rest(z))


@dataclass
class BuiltModel:
    model: FaceClassifier
    plan: Plan
    preprocessing: Preprocessing
    weights: StartingWeights


def build_model(config, num_classes: int, log=print, strategy: str | None = None,
                class_names: list[str] | None = None) -> BuiltModel:
    """Backbone with its weights, the preprocessing they expect, head and strategy (config.strategy, or the
    unfreezing stage's `strategy`), from a TrainConfig. `class_names`, when given, must be the facetl run's
    own for its head to be carried over."""
    start = _starting_point(config, log)
    backbone = start.backbone
    preprocessing = _with_flags(config, start.record.preprocessing if start.record else
                                Preprocessing(backbone.input_size, tuple(backbone.mean), tuple(backbone.std),
                                              backbone.colour), start.record is not None, log, backbone.framing)
    check_input_size(start.backbone, preprocessing.size)
    model = _assemble(config, start.backbone, preprocessing.size, num_classes)
    if start.record is not None:
        _carry_head(model, start.state, config.weights, log, start.record.class_names, class_names)
    plan = apply_strategy(model, strategy or config.strategy)
    return BuiltModel(model, plan, preprocessing, start.weights)


def rebuild_model(config, record: RunRecord) -> tuple[FaceClassifier, Plan]:
    """The structure a run trained (no weights loaded): for reading its checkpoint. A gradual run is rebuilt as
    its last stage; a checkpoint of an earlier stage loads into it as well (batch norm is the same numbers)."""
    backbone = create_backbone(config.backbone, "none")
    model = _assemble(config, backbone, record.preprocessing.size, len(record.class_names))
    strategy = parse_unfreeze(config.unfreeze or "1:frozen")[-1][1] if config.strategy == "gradual" else \
        config.strategy
    return model, apply_strategy(model, strategy)


def resolve_preprocessing(config, log=print) -> Preprocessing:
    """The preprocessing `build_model(config, ...)` gives its model, without building one: the backbone's
    pretrained input (from the registry or timm's pretrained config), or, with a facetl run as --weights, the
    run's own (read from its checkpoint's record); flags on top."""
    source_run = None
    if config.weights not in ("imagenet", "none", "auto", *PACKAGED):
        source_run = read_weights(config.weights)[1]
    if source_run is not None:
        return _with_flags(config, source_run.preprocessing, True, log)
    size, mean, std = pretrained_input(config.backbone)
    colour, framing = pretrained_framing(config.backbone)
    return _with_flags(config, Preprocessing(size, mean, std, colour), False, log, framing)


def _with_flags(config, default: Preprocessing, from_run: bool, log, framing: str | None = None) -> Preprocessing:
    """The weights' preprocessing with --img-size, --normalize and --colour on top, and this run's faces (cut as
    the backbone's weights were trained, when it declares a framing that facetl's face cutter knows)."""
    preprocessing, changed = default.with_overrides(config.img_size, config.normalize, config.colour)
    # faces are a property of the new run's data (photos or crops), not of the weights: never inherited
    faces = config.face_alignment()
    if faces is not None and framing is not None:
        from facetl.data.faces import TEMPLATES  # the face cutter (skimage and all) only when faces are cut

        if framing in TEMPLATES:
            faces = dataclasses.replace(faces, template=framing)
    # the crops' own template is a property of the new run's data too; the framing comes with the weights
    preprocessing = dataclasses.replace(preprocessing, faces=faces, crops=config.crops,
                                        framing=preprocessing.framing or framing)
    if preprocessing.recut and not _landmark_template(preprocessing.framing):
        log(f"crops: the {preprocessing.framing} framing is cut from a detector's face box, not from landmarks; "
            f"the {config.crops} crops are resized whole")
        preprocessing = dataclasses.replace(preprocessing, crops=None)
    if preprocessing.recut:
        log(f"crops: the {config.crops} crops are re-cut to the {preprocessing.framing} framing the weights were "
            "trained on, not resized whole (--crops)")
    if from_run and changed:
        log(f"warning: --weights {config.weights} was trained with {default.describe()}; the flags change its "
            f"{', '.join(changed)} to {preprocessing.describe()}")
    return preprocessing


def _landmark_template(name: str | None) -> bool:
    from facetl.data.faces import TEMPLATES  # the face cutter (skimage and all) only when faces are cut

    return name in TEMPLATES and TEMPLATES[name][1] is not None


@dataclass
class _Start:
    backbone: nn.Module
    weights: StartingWeights
    record: RunRecord | None = None   # when the weights are a facetl run
    state: dict | None = None         # the file's state dict, when the weights are a file


def _starting_point(config, log) -> _Start:
    weights = config.weights
    if weights == "auto":
        try:
            return _Start(create_backbone(config.backbone, "imagenet"), StartingWeights("imagenet"))
        except WeightsUnavailable as exc:
            log(f"no ImageNet weights: {exc}; training from random initialisation (no pretraining)")
            return _Start(create_backbone(config.backbone, "none"), StartingWeights("none"))
    if weights in ("imagenet", "none"):
        return _Start(create_backbone(config.backbone, weights), StartingWeights(weights))
    if weights in PACKAGED:
        return _Start(create_backbone(config.backbone, weights),
                      StartingWeights("packaged", weights, PACKAGED[weights].describe()))
    state, record = read_weights(weights)  # read once: a VGG checkpoint is half a gigabyte
    backbone = create_backbone(config.backbone, "none")
    load_backbone_state(backbone, state, weights)
    return _Start(backbone, StartingWeights.from_flag(weights, is_run=record is not None), record, state)


def check_input_size(backbone: nn.Module, size: int) -> None:
    """Refuse, with the smallest size that works, an image size the backbone's feature map cannot take."""
    def works(side: int) -> bool:
        try:
            return backbone.flat_dim(side) > 0
        except RuntimeError:
            return False

    if works(size):
        return
    smallest = next((side for side in range(size + 1, 257) if works(side)), None)
    need = f"at least {smallest}" if smallest else "a larger size"
    raise FacetlError(f"--img-size {size} is too small for backbone {backbone.name}: it needs {need} pixels")


def _assemble(config, backbone, img_size: int, num_classes: int) -> FaceClassifier:
    # a multi-attribute run has one sigmoid output per attribute, even for two of them
    outputs = num_classes if config.multi_attribute else 1 if num_classes == 2 else num_classes
    head = build_head(config.head, backbone, img_size, outputs, config.dropout)
    return FaceClassifier(backbone, head, outputs)


def _carry_head(model: FaceClassifier, state: dict, path: str, log, theirs: list[str],
                ours: list[str] | None) -> None:
    """A facetl run as --weights also passes on its head when the task is the same: the same classes (a gender
    run's one logit would otherwise become a smile run's), and shapes that fit."""
    if ours is not None and list(theirs) != list(ours):
        log(f"head: new (the weights' run {Path(path)} classified {', '.join(theirs)}; this run: {', '.join(ours)})")
        return
    own = model.head.state_dict()
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if head and all(k in own and own[k].shape == v.shape for k, v in head.items()) and len(head) == len(own):
        model.head.load_state_dict(head)
        log(f"head: carried over from {Path(path)}")
