"""One contract for a trained classifier, whatever runs it: `Classifier`. `TorchClassifier` is a reopened run
on this machine's device and precision; `OnnxClassifier` (onnx.py) an exported file on ONNX Runtime.
`open_classifier` chooses by the engine asked for."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from facetl.errors import FacetlError
from facetl.inference.decision import Decision
from facetl.inference.onnx import OnnxClassifier
from facetl.inference.run import LoadedRun, load_run
from facetl.preprocessing import Preprocessing
from facetl.runtime import Runtime


class Classifier(Protocol):
    """uint8 (batch, size, size, 3) images, prepared by `preprocessing` -> (batch, classes) probabilities
    (never NaN: NotANumber instead), and the run's `decision` on them."""

    title: str
    class_names: list[str]
    preprocessing: Preprocessing
    decision: Decision

    def classify(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class TorchClassifier:
    run: LoadedRun
    runtime: Runtime

    @property
    def title(self) -> str:
        return self.run.record.title

    @property
    def class_names(self) -> list[str]:
        return self.run.class_names

    @property
    def preprocessing(self) -> Preprocessing:
        return self.run.record.preprocessing

    @property
    def decision(self) -> Decision:
        return Decision.of(self.run.record)

    def classify(self, images: np.ndarray) -> np.ndarray:
        return self.run.classify(images, self.runtime)


def open_classifier(run: str | Path, engine: str, runtime: Runtime, threads: int | None = None) -> Classifier:
    """engine torch: the run's best.pt; engine onnx: RUN/model.onnx (made by facetl export) or a .onnx file.

    `threads`: ONNX Runtime's threads per operator (None: one per usable core); torch's are the caller's."""
    if engine == "torch":
        return TorchClassifier(load_run(run), runtime)
    path = Path(run) if str(run).endswith(".onnx") else Path(run) / "model.onnx"
    if not path.is_file():
        raise FacetlError(f"{path} not found: make it with `facetl export {run}` (or give the .onnx file)")
    return OnnxClassifier(path, threads)
