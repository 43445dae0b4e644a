"""The one entry point that builds a backbone by name: facetl's adapters first, then any timm model.

Unknown names raise a message listing the valid ones.
"""
from __future__ import annotations

from facetl.errors import FacetlError
from facetl.models.backbones import Backbone, TimmBackbone
from facetl.models.registry import registered


def list_backbones() -> list[str]:
    return sorted(registered())


def create_backbone(name: str, weights: str) -> Backbone:
    """Build backbone `name` with `weights` ('imagenet', 'none', or a file with a state dict)."""
    adapters = registered()
    if name in adapters:
        return adapters[name](weights)
    import timm

    if timm.is_model(name):
        return TimmBackbone(name, weights)
    raise FacetlError(f"unknown backbone {name!r}; choose {', '.join(list_backbones())} or a timm model name "
                      f"(list them with: facetl backbones --timm PATTERN)")
