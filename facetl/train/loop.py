"""One epoch of training and one pass of evaluation; both return plain metric dicts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facetl.errors import FacetlError
from facetl.models.outputs import probabilities
from facetl.runtime import Precision

Steps = Callable[[Sequence], Iterable]  # wraps a stage's steps: iterates them, telling whoever listens


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
            smoothing: float = 0.0) -> torch.Tensor:
    """BCE-with-logits on one logit for two classes, cross-entropy on N logits otherwise. `weights`
    (--balance loss): the positive class's weight (pos_weight) for one logit, one weight per class for N.
    `smoothing` (--label-smoothing, training only): targets move that far towards uniform.
    Multi-attribute labels (B, K) with -1 for a missing value: see `masked_bce`."""
    if labels.dim() == 2:
        return masked_bce(logits, labels, weights, smoothing)
    if logits.shape[1] == 1:
        target = labels.float() * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(logits[:, 0], target, pos_weight=weights)
    return F.cross_entropy(logits, labels, weight=weights, label_smoothing=smoothing)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None,
               smoothing: float = 0.0) -> torch.Tensor:
    """Multi-attribute: BCE-with-logits of K logits against (B, K) labels, averaged over the observed entries; a
    label of -1 (missing) contributes neither loss nor gradient. `pos_weight`: one per attribute."""
    observed = labels >= 0
    target = labels.clamp_min(0).float() * (1 - smoothing) + smoothing / 2
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    return (loss * observed).sum() / observed.sum().clamp_min(1)


def class_weights(labels: np.ndarray, classes: int, device: torch.device) -> torch.Tensor:
    """Weights that make every class count as much as the others in the loss, from the training labels:
    negatives/positives as pos_weight for two classes, n / (classes * n_c) per class otherwise; multi-attribute
    (labels (N, K)), each attribute's negatives/positives over its observed values."""
    if labels.ndim == 2:
        positives, negatives = (labels == 1).sum(0), (labels == 0).sum(0)
        return torch.tensor(negatives / np.maximum(positives, 1), dtype=torch.float32, device=device)
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    if classes == 2:
        weights = [counts[0] / max(counts[1], 1)]
    else:
        weights = len(labels) / (classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def balanced_order(index: np.ndarray, labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """--balance sampler: an epoch of len(index) draws, with replacement, in which each class is equally
    likely; seeded by (seed, epoch), so a resumed run draws what an uninterrupted one would."""
    counts = np.bincount(labels[index])
    p = 1.0 / counts[labels[index]]
    rng = np.random.default_rng([seed, epoch])
    return index[rng.choice(len(index), size=len(index), replace=True, p=p / p.sum())]


def accuracy(probs, labels) -> float:
    """Share of right answers: of images (the most probable class); multi-attribute, of observed (image,
    attribute) labels at probability 0.5. Takes numpy arrays or tensors."""
    if labels.ndim == 2:
        observed = labels >= 0
        return float((((probs >= 0.5) == (labels == 1)) & observed).sum() / max(int(observed.sum()), 1))
    return float((probs.argmax(1) == labels).float().mean() if isinstance(probs, torch.Tensor)
                 else (probs.argmax(1) == labels).mean())


@dataclass
class Optimisation:
    """What one training step needs: the model, the part that trains (DDP-wrapped when distributed),
    the optimiser and its gradient scaler, the autocast settings and the batch size."""

    model: nn.Module
    part: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    batch_size: int
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    schedule: Callable[[float], float] | None = None  # sets the LRs at a fraction of the epoch; returns the head's
    ema: object | None = None                          # a WeightAverage, updated after every step


def train_one_epoch(opt: Optimisation, source, labels: np.ndarray, order: np.ndarray, generator: torch.Generator,
                    steps: Steps = iter) -> dict:
    """Train over `order` in batches; `steps` wraps the batches (fit's tells the callbacks, progress bars among
    them, of each one through). Returns sums (loss, correct, seen) so that ranks can add theirs up.
    Loss and right answers add up on the device and are read once, at the end: a read per step would make the
    host wait for the GPU every batch (on a CPU it costs nothing, so there the loss is checked every step)."""
    opt.model.eval()  # the frozen prefix computes as it did for the feature cache (no dropout, no drop-path)
    opt.part.train()  # safe: frozen batch-norm layers were replaced by ones that a .train() call cannot unfreeze
    sums, lrs = None, []
    watch = FiniteWatch(check_every=1 if opt.precision.device.type == "cpu" else FINITE_CHECK_EVERY)
    for number, (start, stop) in enumerate(steps(batch_bounds(len(order), opt.batch_size)), start=1):
        if opt.schedule is not None:
            lrs.append(opt.schedule(start / max(len(order), 1)))
        batch = order[start:stop]
        z = source.batch(batch, generator)
        y = torch.as_tensor(labels[batch]).to(z.device, non_blocking=True)
        loss, logits = train_step(opt, z, y, number, watch)
        if opt.ema is not None:
            opt.ema.update(opt.model)
        with torch.no_grad():
            step = torch.stack([loss.detach() * len(batch), batch_correct(logits.detach(), y)]).to(sum_dtype(z))
        sums = step if sums is None else sums + step
    watch.check(opt)
    loss_sum, correct = sums.tolist() if sums is not None else (0.0, 0)  # the epoch's one read of the device
    return {"loss_sum": loss_sum, "correct": correct if labels.ndim == 2 else int(round(correct)), "seen": len(order),
            "lr": float(np.mean(lrs)) if lrs else None}


def batch_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Right answers in a batch, as a device tensor: images (the most probable class); multi-attribute, the
    batch's share of right observed labels times its size (as `accuracy`)."""
    p = probabilities(logits, multi_attribute=y.dim() == 2)
    if y.dim() == 2:
        observed = y >= 0
        right = (((p >= 0.5) == (y == 1)) & observed).sum()
        return (right.float() / observed.sum().clamp_min(1)).to(sum_dtype(y)) * len(y)
    return (p.argmax(1) == y).sum().float()


def sum_dtype(t: torch.Tensor) -> torch.dtype:
    """Epoch sums in float64 as Python's floats were (MPS has no float64)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


FINITE_CHECK_EVERY = 50  # steps between reads of the non-finite flag on a GPU


class FiniteWatch:
    """Notes, on the device, the first batch whose loss was not finite, and raises NonFiniteLoss when read: every
    step on a CPU (as soon as it happens), every `check_every` steps and at the end of an epoch on a GPU."""

    def __init__(self, check_every: int):
        self.check_every, self.first_bad, self.inputs_bad, self.steps = check_every, None, None, 0

    def note(self, opt: Optimisation, loss: torch.Tensor, z: torch.Tensor, number: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        if self.check_every == 1:
            if bad:
                raise NonFiniteLoss(f"the training loss became {loss.item()} at batch {number}"
                                    f"{_why_not_finite(opt, not torch.isfinite(z).all())}")
            return
        unseen = bad & (self.first_bad == 0) if self.first_bad is not None else bad
        number_t = torch.full_like(loss.detach(), number, dtype=torch.int64)
        inputs_bad = ~torch.isfinite(z.detach()).all()
        self.first_bad = torch.where(unseen, number_t, self.first_bad if self.first_bad is not None else
                                     torch.zeros_like(number_t))
        self.inputs_bad = torch.where(unseen, inputs_bad, self.inputs_bad if self.inputs_bad is not None else
                                      torch.zeros_like(inputs_bad))
        self.steps += 1
        if self.steps % self.check_every == 0:
            self.check(opt)

    def check(self, opt: Optimisation) -> None:
        if self.first_bad is None or self.check_every == 1:
            return
        first = int(self.first_bad)
        if first:
            raise NonFiniteLoss(f"the training loss became not finite at batch {first}"
                                f"{_why_not_finite(opt, bool(self.inputs_bad), first == 1)}")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each training batch over n images. A last batch of one image joins the one before it:
    batch norm cannot normalise a single image whose map is 1x1 (MobileNetV2's last stages at 32 px), and one
    image would be a step on a very noisy gradient anyway."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def train_step(opt: Optimisation, z: torch.Tensor, y: torch.Tensor, number: int = 1,
               watch: "FiniteWatch | None" = None):
    """One optimiser step on a batch; returns the loss and the logits. A loss that is not finite stops training
    (see FiniteWatch; without one it is checked now)."""
    with opt.precision.autocast():
        logits = opt.part(z).float()
    loss = loss_fn(logits, y, opt.class_weights, opt.label_smoothing)
    (watch or FiniteWatch(check_every=1)).note(opt, loss, z, number)
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return loss, logits


@dataclass
class Evaluator:
    """Loss, accuracy and per-image class probabilities of the model over rows of a source."""

    model: nn.Module
    cut: int                      # the source hands over features[:cut]'s output (0: the normalised image)
    source: object                # ImageSource or FeatureSource
    labels: np.ndarray
    precision: Precision
    batch_size: int
    class_weights: torch.Tensor | None = None   # the training loss's, so validation loss measures the same
    temperature: float = 1.0      # the run's calibration: divides the logits before the probabilities (not the loss)

    @torch.inference_mode()
    def __call__(self, index: np.ndarray, steps: Steps = iter) -> dict:
        self.model.eval()
        probs, raw, total_loss = [], [], None
        for start in steps(range(0, len(index), self.batch_size)):
            batch = index[start:start + self.batch_size]
            z = self.source.batch(batch, None)
            y = torch.as_tensor(self.labels[batch]).to(z.device, non_blocking=True)
            with self.precision.autocast():
                logits = self.model.forward_suffix(z, self.cut).float()
            loss = loss_fn(logits, y, self.class_weights).to(sum_dtype(z)) * len(batch)
            total_loss = loss if total_loss is None else total_loss + loss
            probs.append(probabilities(logits, self.temperature, self.labels.ndim == 2))
            raw.append(logits)
        # one read of the device for the whole split, not one per batch
        probs = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, 2))
        raw = torch.cat(raw).cpu().numpy() if raw else np.zeros((0, probs.shape[1]), dtype=np.float32)
        total_loss = float(total_loss) if total_loss is not None else 0.0
        right = accuracy(probs, self.labels[index]) if len(index) else float("nan")
        return {"loss": total_loss / max(len(index), 1), "acc": right, "probs": probs, "logits": raw}


def _why_not_finite(opt: Optimisation, inputs_bad: bool, before_any_step: bool | None = None) -> str:
    """The likeliest cause, so the hint fits: inputs, weights, or steps too large for the learning rate."""
    if inputs_bad:
        fp16 = "; the frozen part overflowed in fp16: try --precision bf16 or fp32" if opt.precision.name == "fp16" \
            else "; check the images and the --weights file"
        return f": its inputs were already not finite{fp16}"
    broken = [n for n, p in opt.model.named_parameters() if not torch.isfinite(p).all()]
    if before_any_step is None:
        before_any_step = not any(opt.optimizer.state.values())
    if broken and before_any_step:
        return f": the starting weights hold NaN or inf ({broken[0]}); check the --weights file"
    return ": the steps grew too large; try a lower --lr"


class NonFiniteLoss(FacetlError):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""
