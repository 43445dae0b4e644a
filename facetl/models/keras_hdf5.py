"""A Keras HDF5 model file read as data: its `model_config` (JSON) and its weight arrays by layer name.

Keras 2 saves a model as one HDF5 file: the attribute `model_config` holds the architecture as JSON, and the
group `model_weights/LAYER` holds that layer's arrays in the order its attribute `weight_names` lists them.
h5py reads both; nothing is imported from Keras or TensorFlow and nothing is executed or unpickled. A file
that is not HDF5, is cut short, or lacks these parts is refused in one line naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.errors import FacetlError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class KerasModelFile:
    path: Path
    keras_version: str
    layers: list[dict]                   # model_config's layers: class_name, name, config, inbound_nodes
    weights: dict[str, list[np.ndarray]]  # layer name -> its arrays, in Keras's order (e.g. kernel, bias)

    def layer(self, name: str) -> dict:
        found = next((layer for layer in self.layers if layer.get("name") == name), None)
        if found is None:
            raise FacetlError(f"{self.path} has no layer {name!r}: it is not the model facetl expects")
        return found


def read_keras_hdf5(path: str | Path) -> KerasModelFile:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(HDF5_SIGNATURE))
    if head != HDF5_SIGNATURE:
        raise FacetlError(f"{path} is not an HDF5 file (a Keras model file starts with the HDF5 signature)")
    try:
        import h5py
    except ImportError:
        raise FacetlError(f"reading {path.name} needs h5py: pip install 'facetl[faces]'") from None
    try:
        with h5py.File(path, "r") as f:
            config = _model_config(f, path)
            weights = _weights(f, path)
            version = _text(f.attrs.get("keras_version", "unknown"))
    except OSError as exc:  # h5py's way of saying the file ends early or a block is damaged
        raise FacetlError(f"{path} is truncated or damaged: {str(exc).splitlines()[0][:120]}") from None
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise FacetlError(f"{path}: its model_config has no list of layers")
    return KerasModelFile(path, version, layers, weights)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _model_config(f, path: Path) -> dict:
    if "model_config" not in f.attrs:
        raise FacetlError(f"{path} is an HDF5 file but not a saved Keras model (no model_config)")
    try:
        return json.loads(_text(f.attrs["model_config"]))
    except json.JSONDecodeError as exc:
        raise FacetlError(f"{path}: its model_config is not valid JSON ({exc})") from None


def _weights(f, path: Path) -> dict[str, list[np.ndarray]]:
    group = f.get("model_weights", f)  # a whole-model file nests them; a weights-only file does not
    names = group.attrs.get("layer_names")
    if names is None:
        raise FacetlError(f"{path} has no weights (no layer_names)")
    weights = {}
    for layer in map(_text, names):
        arrays = group[layer]
        weights[layer] = [np.asarray(arrays[_text(n)], dtype=np.float32) for n in arrays.attrs["weight_names"]]
    return weights
