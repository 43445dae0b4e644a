"""Running a model that `facetl export` wrote, on ONNX Runtime on the CPU, with no torch and no training code.

The file's contract (see facetl/commands/export.py, which writes it): input `images`, uint8 (batch, size, size, 3) RGB;
output `probabilities`, float32 (batch, classes); everything needed to prepare a photo in its `facetl.*`
metadata. `OnnxClassifier` checks the graph against that metadata when it opens the file, so a foreign
graph is refused then rather than at the first photo.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from facetl.errors import FacetlError, NotANumber
from facetl.inference.decision import Decision
from facetl.preprocessing import Preprocessing

FORMAT_VERSION = "1"           # facetl.format: bumped only when an old reader would misread a new file
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class OnnxClassifier:
    """A .onnx written by facetl, on ONNX Runtime on the CPU: a `Classifier` (classifiers.py).

    `.class_names`, `.preprocessing` (rebuilt from the metadata: decode photos with it),
    `.classify(images)`: uint8 (batch, size, size, 3) -> float32 (batch, classes) probabilities.
    `.metadata` holds every `facetl.*` key, for fields later versions add.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FacetlError(f"ONNX model not found: {self.path}")
        self.session = _open_session(self.path, threads)
        self.metadata = _facetl_metadata(self.session, self.path)
        self.class_names, self.preprocessing = _read_contract(self.metadata, self.path)
        _check_graph(self.session, len(self.class_names), self.preprocessing.size, self.path)

    @property
    def title(self) -> str:
        return self.metadata.get("facetl.title", "")

    @property
    def decision(self) -> Decision:
        """Exported runs are single-target (export refuses multi-attribute ones): the recorded threshold decides
        two classes (None: 0.5; files from before it was recorded too)."""
        try:
            value = json.loads(self.metadata.get("facetl.threshold", "null"))
        except ValueError:
            value = None
        return Decision(self.class_names, float(value) if isinstance(value, (int, float)) else None)

    def classify(self, images: np.ndarray) -> np.ndarray:
        size = self.preprocessing.size
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            shape = getattr(images, "shape", None)
            raise FacetlError(f"{self.path.name} takes uint8 images of shape (batch, {size}, {size}, 3); "
                              f"got {getattr(images, 'dtype', type(images).__name__)} {shape}")
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        probs = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0]
        if not np.isfinite(probs).all():  # never hand out a NaN as an answer
            raise NotANumber(f"{self.path}: the model's output is not a number (NaN or inf) for these images")
        return probs


def session_options(threads: int | None = None):
    """Chosen for speed on a CPU: every graph optimisation (constant folding, conv+batch-norm+activation
    fusion, NCHWc layouts); one thread per usable core inside each operator (`threads` overrides); and
    operators run one after another, since a CNN is a chain and parallel operators only add overhead."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    return options


def usable_cores() -> int:
    # the cores this process may run on (a container's or taskset's share), not the machine's count
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _open_session(path: Path, threads: int | None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's errors derive from Exception only, one class per status code
        raise FacetlError(f"{path} is not an ONNX model ONNX Runtime can open ({first_line(exc)})") from None


def _facetl_metadata(session, path: Path) -> dict[str, str]:
    metadata = session.get_modelmeta().custom_metadata_map
    if "facetl.format" not in metadata:
        raise FacetlError(f"{path} was not exported by facetl (no facetl metadata); export the run with facetl export")
    if metadata["facetl.format"] != FORMAT_VERSION:
        raise FacetlError(f"{path} uses facetl ONNX format {metadata['facetl.format']}; this facetl reads "
                          f"format {FORMAT_VERSION}")
    return {k: v for k, v in metadata.items() if k.startswith("facetl.")}


def _check_graph(session, classes: int, size: int, path: Path) -> None:
    """The graph takes and gives what the metadata promises: facetl metadata on a foreign graph would
    otherwise fail at the first photo, inside ONNX Runtime."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    def fits(shape, wanted) -> bool:  # a named (dynamic) axis fits any size
        return len(shape) == len(wanted) and all(w is None or not isinstance(d, int) or d == w
                                                 for d, w in zip(shape, wanted))
    if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)" \
            or not fits(inputs[0].shape, (None, size, size, 3)):
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise FacetlError(f"{path}: its graph does not take {INPUT_NAME} uint8 (batch, {size}, {size}, 3) as its "
                          f"facetl metadata says (it takes {found}); it is not a facetl export")
    if OUTPUT_NAME not in [o.name for o in outputs]:
        raise FacetlError(f"{path}: its graph has no {OUTPUT_NAME} output; it is not a facetl export")
    output = next(o for o in outputs if o.name == OUTPUT_NAME)
    if output.type != "tensor(float)" or not fits(output.shape, (None, classes)):
        raise FacetlError(f"{path}: its {OUTPUT_NAME} output is {output.type} {output.shape}, not float32 "
                          f"(batch, {classes}) for its {classes} classes; it is not a facetl export")


def _read_contract(metadata: dict[str, str], path: Path) -> tuple[list[str], Preprocessing]:
    try:
        class_names = [str(c) for c in json.loads(metadata["facetl.class_names"])]
        preprocessing = Preprocessing.from_onnx_metadata(metadata)
    except (KeyError, TypeError, ValueError) as exc:
        raise FacetlError(f"{path} has damaged facetl metadata ({first_line(exc)})") from None
    return class_names, preprocessing


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
