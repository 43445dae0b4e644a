"""Classification heads put on a backbone's feature map."""
from __future__ import annotations

from torch import nn

from facetl.errors import FacetlError
from facetl.models.mini_xception import expression_head


def build_head(kind: str, backbone, img_size: int, outputs: int, dropout: float) -> nn.Sequential:
    """linear: global pool -> outputs (study 4); mlp: -> 4096 -> 1024 (study 1); vgg: -> 4096 -> 4096 (study 3);
    fer2013 or fer2013:EXPRESSION: mini_xception's own expression classifier (models/mini_xception.py)."""
    if kind == "fer2013" or kind.startswith("fer2013:"):
        return nn.Sequential(expression_head(backbone, kind, outputs))
    if kind == "linear":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.channels, outputs))
    widths = {"mlp": (4096, 1024), "vgg": (4096, 4096)}.get(kind)
    if widths is None:
        raise FacetlError(f"unknown head {kind!r}; choose linear, mlp, vgg, or with mini_xception fer2013 or "
                          "fer2013:EXPRESSION")
    layers: list[nn.Module] = [backbone.flat_pool, nn.Flatten()]
    width = backbone.flat_dim(img_size)
    for hidden in widths:
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)
