"""One epoch of training and one pass of evaluation; both return plain metric dicts."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from facetl.errors import FacetlError


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on one logit for two classes, cross-entropy on N logits otherwise."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return F.cross_entropy(logits, labels)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, classes) probabilities; a single logit becomes [1 - p, p]."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def train_one_epoch(model, part, source, labels: np.ndarray, order: np.ndarray, optimizer, scaler, precision,
                    batch_size: int, generator: torch.Generator, desc: str = "train", progress: bool = True) -> dict:
    """Train `part` (the trainable suffix, DDP-wrapped when distributed) over `order` in batches.

    Returns sums (loss, correct, seen) so that ranks can add theirs up.
    """
    model.train()  # through the whole model, so frozen batch-norm layers stay in eval mode
    total_loss, correct, seen = 0.0, 0, 0
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        batch = order[start:start + batch_size]
        z = source.batch(batch, generator)
        y = torch.as_tensor(labels[batch], device=z.device)
        with precision.autocast():
            logits = part(z).float()
        loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the training loss became {loss.item()} at batch {start // batch_size + 1}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(batch)
        correct += int((probabilities(logits.detach()).argmax(1) == y).sum())
        seen += len(batch)
    return {"loss_sum": total_loss, "correct": correct, "seen": seen}


@torch.inference_mode()
def evaluate(model, source, labels: np.ndarray, index: np.ndarray, precision, cut: int, batch_size: int,
             desc: str = "eval", progress: bool = True) -> dict:
    """Loss, accuracy and per-image class probabilities over `index`, in that order."""
    model.eval()
    probs, total_loss = [], 0.0
    for start in tqdm(range(0, len(index), batch_size), desc=desc, unit="batch", leave=False,
                      disable=not progress):
        batch = index[start:start + batch_size]
        z = source.batch(batch, None)
        y = torch.as_tensor(labels[batch], device=z.device)
        with precision.autocast():
            logits = model.forward_suffix(z, cut).float()
        total_loss += loss_fn(logits, y).item() * len(batch)
        probs.append(probabilities(logits).cpu().numpy())
    probs = np.concatenate(probs) if probs else np.zeros((0, 2))
    accuracy = float((probs.argmax(1) == labels[index]).mean()) if len(index) else float("nan")
    return {"loss": total_loss / max(len(index), 1), "acc": accuracy, "probs": probs}


class NonFiniteLoss(FacetlError):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""
