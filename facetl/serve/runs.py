"""The runs a server answers with: each opened once, under a unique name, with its model card."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from facetl.errors import FacetlError
from facetl.evaluate.metrics import summary_metrics
from facetl.inference.classifiers import Classifier, TorchClassifier, open_classifier
from facetl.record import RunRecord
from facetl.runreader import read_metrics, read_record
from facetl.runtime import Runtime

# a card's metrics: {"split", "images", and each metric that sums a run up (the metric table's): value or None}
TestMetrics = dict[str, str | int | float | None]


@dataclass(frozen=True)
class ModelCard:
    name: str                      # how answers are keyed: the run folder's name (made unique)
    path: str
    engine: str                    # torch | onnx
    title: str
    backbone: str
    classes: list[str]
    pretraining: str               # "ImageNet pretrained", "no pretraining", ... ("" when unknown)
    image_size: int
    colour: str
    faces: str                     # how its faces are found and cut, in words
    trained: str                   # ISO time the run started ("" when unknown)
    best_epoch: int | None
    metrics: TestMetrics | None    # from RUN/metrics.json, when the run has one


@dataclass(frozen=True)
class ServedRun:
    card: ModelCard
    classifier: Classifier

    @property
    def name(self) -> str:
        return self.card.name


def open_runs(paths: list[str], engine: str, runtime: Runtime, threads: int | None = None) -> list[ServedRun]:
    """Open every run (all of them, or a FacetlError naming the first that cannot be served).
    `threads`: ONNX Runtime's per operator (torch's are set by the thread that runs the models)."""
    if not paths:
        raise FacetlError("give at least one run folder")
    runs, names = [], set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise FacetlError(f"run not found: {path}")
        name = _unique(path.stem if path.suffix == ".onnx" else path.resolve().name, names)
        names.add(name)
        classifier = open_classifier(path, engine, runtime, threads)
        if classifier.decision.multi_attribute:
            raise FacetlError(f"{path} is a multi-attribute run; facetl serve answers single-target runs so far "
                              "(use facetl predict on it)")
        runs.append(ServedRun(model_card(name, path, classifier, engine), classifier))
    return runs


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def model_card(name: str, path: Path, classifier: Classifier, engine: str) -> ModelCard:
    """What the page shows about a run: from its record (best.pt, or run.json beside an exported model),
    else from the ONNX metadata; test metrics from the run folder's metrics.json."""
    folder = path if path.is_dir() else None
    if isinstance(classifier, TorchClassifier):
        record, backbone = classifier.run.record, classifier.run.config.backbone
    else:
        record, backbone = _record_beside(folder), classifier.metadata.get("facetl.backbone", "")
    prep = classifier.preprocessing
    if prep.faces is not None:
        faces = (f"trained on faces found in whole photos ({prep.faces.detector}, {prep.faces.landmarks} "
                 f"landmarks, aligned to the {prep.faces.template} template); served the same way")
    else:
        cut = prep.photo_faces()
        faces = ("trained on face crops; served on faces found by MTCNN and "
                 + ("cut from their face box" if cut.template == "box" else
                    f"aligned by their {cut.landmarks} landmarks to the {cut.template} template")
                 + (f" (the {prep.framing} framing its weights expect)" if prep.framing else ""))
    return ModelCard(name=name, path=str(path), engine=engine,
                     title=record.title if record else classifier.title or name,
                     backbone=backbone, classes=list(classifier.class_names),
                     pretraining=record.weights.describe() if record else "", image_size=prep.size,
                     colour=prep.colour, faces=faces, trained=record.created if record else "",
                     best_epoch=record.best_epoch if record else None, metrics=_metrics(folder))


def _record_beside(folder: Path | None) -> RunRecord | None:
    try:
        return read_record(folder) if folder else None
    except FacetlError:
        return None  # a card without the record is still a card


def _metrics(folder: Path | None) -> TestMetrics | None:
    try:
        values = read_metrics(folder) if folder else None
        if values is None:
            return None
        return {"split": str(values.get("split", "test")), "images": int(values["n_images"]),
                **{m.key: _finite(values.get(m.key)) for m in summary_metrics()}}
    except (FacetlError, KeyError, TypeError, ValueError):
        return None


def _finite(value) -> float | None:
    """A metric as a number, or None when missing or NaN (JSON has no NaN: it would fail the whole card)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)
