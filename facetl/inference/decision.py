"""What a run answers from its probabilities: the one place its decision is made.

Two classes: class 1 when its probability reaches the run's threshold (None: 0.5). More classes: the most
probable. Several attributes (multi-attribute runs): each attribute that reaches its own threshold. The
temperature is not here: it is applied to the logits before the probabilities exist (models/outputs.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facetl.evaluate.metrics import decide, decide_attributes
from facetl.record import RunRecord


@dataclass(frozen=True)
class Decision:
    class_names: list[str]                 # the attributes, for a multi-attribute run
    threshold: float | None = None         # two classes
    thresholds: list[float] | None = None  # multi-attribute: one per attribute
    multi_attribute: bool = False

    @classmethod
    def of(cls, record: RunRecord) -> "Decision":
        return cls(list(record.class_names), record.threshold, record.thresholds, record.multi_attribute)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities -> (N,) class indices, or (N, K) 0/1 for a multi-attribute run."""
        if self.multi_attribute:
            return decide_attributes(probs, self.thresholds)
        return decide(probs, self.threshold)

    def label(self, probs: np.ndarray) -> tuple[str, float | None, list[int] | None]:
        """One image's answer: its label, the label's probability, and (multi-attribute) the 0/1 per attribute,
        where the label is the attributes it has joined by + (none when it has none)."""
        decided = self.decide(probs[None])[0]
        if self.multi_attribute:
            label = "+".join(n for n, d in zip(self.class_names, decided) if d) or "none"
            return label, None, [int(d) for d in decided]
        return self.class_names[int(decided)], float(probs[int(decided)]), None
