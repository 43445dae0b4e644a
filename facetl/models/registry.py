"""One place that knows every backbone: `@register_backbone` adds one, `create_backbone` builds one.

Names registered here are facetl's own adapters around torchvision models; any other name is tried as
a timm model. Unknown names raise a message listing the valid ones.
"""
from __future__ import annotations

from typing import Callable

from facetl.errors import FacetlError

_BACKBONES: dict[str, Callable] = {}


def register_backbone(fn: Callable) -> Callable:
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is registered twice")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, weights: str):
    """Build backbone `name` with `weights` ('imagenet', 'none', or a file with a state dict)."""
    from facetl.models import backbones  # noqa: F401  (registers the built-in adapters)

    if name in _BACKBONES:
        return _BACKBONES[name](weights)
    import timm

    if timm.is_model(name):
        return backbones.TimmBackbone(name, weights)
    raise FacetlError(f"unknown backbone {name!r}; choose {', '.join(list_backbones())} or a timm model name "
                      f"(list them with: facetl backbones --timm PATTERN)")
