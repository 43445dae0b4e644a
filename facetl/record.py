"""What a run was, as typed records saved in every checkpoint and in run.json.

`RunRecord` is the contract between training (which writes it) and everything that reopens a run
(evaluate, predict, reports, sweeps, and later serving and export). Display strings are derived from
these fields; no decision is ever taken by comparing display strings.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from facetl.errors import FacetlError
from facetl.preprocessing import Preprocessing

WEIGHT_KINDS = ("imagenet", "none", "file", "run", "packaged")
TASKS = ("classes", "multi-attribute")  # one class per image (sigmoid or softmax) | one sigmoid per attribute


@dataclass(frozen=True)
class StartingWeights:
    """Where the backbone's weights came from before training."""

    kind: str                     # imagenet | none | file (a state dict) | run (a facetl run folder) | packaged
    path: str | None = None       # the file or run folder, for kind file and run; the weights' name for packaged
    packaged: dict | None = None  # packaged face weights: package, version, file, sha256, licence (packaged.py)

    @classmethod
    def from_flag(cls, weights: str, is_run: bool = False) -> "StartingWeights":
        if weights in ("imagenet", "none"):
            return cls(weights)
        return cls("run" if is_run else "file", weights)

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if self.kind == "packaged":
            source = self.packaged or {}
            return (f"{self.path} pretrained ({source.get('trained_on', 'packaged weights')}; "
                    f"{source.get('package', '?')}, sha256 {str(source.get('sha256', '?'))[:12]}...)")
        return {"imagenet": "ImageNet pretrained", "none": "no pretraining",
                "file": f"weights from {self.path}", "run": f"weights from facetl run {self.path}"}[self.kind]


@dataclass(frozen=True)
class RuntimeUsed:
    """The machine side of a training run: recorded, never imposed on whoever reopens the run."""

    device: str
    precision: str                # the trainable part's autocast: fp32 | bf16 | fp16
    frozen_precision: str         # the frozen part's (what cached features were computed in)
    processes: int = 1

    def describe(self) -> str:
        same = self.precision == self.frozen_precision
        precision = self.precision if same else f"{self.frozen_precision} frozen part, {self.precision} training"
        return f"{self.device}, {precision}" + (f", {self.processes} processes" if self.processes > 1 else "")


@dataclass(frozen=True)
class Calibration:
    """--calibrate temperature: the temperature fitted on the validation split, and what it changed there."""

    temperature: float
    split: str                    # where it was fitted and measured: val
    images: int
    ece_before: float | None
    ece_after: float | None
    nll_before: float
    nll_after: float

    def describe(self) -> str:
        def ece(value):
            return "n/a" if value is None else f"{value:.4f}"
        name = {"val": "validation"}.get(self.split, self.split)
        return (f"temperature T={self.temperature:.3f} fitted on {name}: ECE before {ece(self.ece_before)} after "
                f"{ece(self.ece_after)}; NLL before {self.nll_before:.4f} after {self.nll_after:.4f} "
                f"({self.images} images)")


@dataclass
class RunRecord:
    title: str
    weights: StartingWeights
    preprocessing: Preprocessing
    class_names: list[str]
    cut: int                      # backbone.features[:cut] is frozen (its output may be cached)
    trainable_params: int
    total_params: int
    data_path_note: str
    trained_with: RuntimeUsed
    created: str                  # ISO time the run started
    best_epoch: int | None = None
    train_seconds: float | None = None
    threshold: float | None = None         # two classes: the probability of class 1 that decides it (None: 0.5)
    threshold_rule: str | None = None      # --threshold as given: a probability, f1 or balanced
    wall_seconds: dict[str, float] = field(default_factory=dict)  # per stage of this invocation of train
    notes: list[str] = field(default_factory=list)
    recipe: list[str] = field(default_factory=list)       # training keys the recipe chose, and why
    stopped_after: int | None = None                      # --patience (or an observer) stopped training after this epoch
    stopped_because: str | None = None                    # why, when an observer stopped it (a pruned trial)
    temperature: float = 1.0               # logits are divided by it before sigmoid/softmax, wherever the run is used
    calibration: Calibration | None = None  # how the temperature was fitted (None: --calibrate none, or an old run)
    task: str = "classes"                  # classes | multi-attribute (class_names are then the attributes)
    thresholds: list[float] | None = None  # multi-attribute: each attribute's threshold on its probability

    @property
    def multi_attribute(self) -> bool:
        return self.task == "multi-attribute"

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["preprocessing"] = self.preprocessing.to_dict()
        return values

    @classmethod
    def read(cls, values, source) -> "RunRecord":
        """A saved record, checked field by field: a damaged or crafted one is one line naming the field."""
        try:
            if not isinstance(values, dict):
                raise ValueError(f"it is a {type(values).__name__}, not a mapping")
            return cls.from_dict(values)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            text = f"{exc.args[0]} is missing" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
            raise FacetlError(f"{source} has a damaged run record: {text}") from None

    def __post_init__(self) -> None:
        names = self.class_names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names: {names!r} is not a list of names")
        if len(names) < (1 if self.multi_attribute else 2):
            raise ValueError(f"class_names: {names!r} has {len(names)} class; a classifier tells apart two or more")
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if not _number(self.temperature) or not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature: {self.temperature!r} is not a positive number")
        if self.threshold is not None and not (_number(self.threshold) and 0 <= self.threshold <= 1):
            raise ValueError(f"threshold: {self.threshold!r} is not a probability")
        if self.thresholds is not None and (not isinstance(self.thresholds, list) or len(self.thresholds) != len(names)
                                            or not all(_number(t) and 0 <= t <= 1 for t in self.thresholds)):
            raise ValueError(f"thresholds: {self.thresholds!r} is not one probability per attribute")
        if not isinstance(self.cut, int) or isinstance(self.cut, bool) or self.cut < 0:
            raise ValueError(f"cut: {self.cut!r} is not a layer index")

    @classmethod
    def from_dict(cls, values: dict) -> "RunRecord":
        values = dict(values)
        values["weights"] = StartingWeights(**values["weights"])
        values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        values["trained_with"] = RuntimeUsed(**values["trained_with"])
        if values.get("calibration"):
            values["calibration"] = Calibration(**values["calibration"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
