"""The backbone registry: `@register_backbone` adds an adapter under its function's name.

This file only keeps the table; `factory.py` fills it (by importing `backbones.py`) and builds from it,
so nothing here imports its members back.
"""
from __future__ import annotations

from typing import Callable

_BACKBONES: dict[str, Callable] = {}


def register_backbone(fn: Callable) -> Callable:
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is registered twice")
    _BACKBONES[name] = fn
    return fn


def registered() -> dict[str, Callable]:
    return dict(_BACKBONES)
