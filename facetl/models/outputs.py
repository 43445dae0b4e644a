"""From a classifier's logits to probabilities: the one definition training, evaluation, prediction and the
exported graph all use, so a run answers the same wherever it runs."""
from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor, temperature: float = 1.0, multi_attribute: bool = False) -> torch.Tensor:
    """(B, classes) probabilities; a single logit becomes [1 - p, p]. `temperature`: the run's calibration
    (--calibrate), which divides the logits first. Multi-attribute: (B, K), each attribute's own sigmoid."""
    if temperature != 1.0:
        logits = logits / temperature
    if multi_attribute:
        return torch.sigmoid(logits)
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)
