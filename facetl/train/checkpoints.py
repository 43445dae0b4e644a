"""Checkpoints sized by what trains.

A run folder holds three kinds of checkpoint file:
- `frozen.pt`, written once: every tensor training never changes (frozen parameters, frozen batch-norm
  statistics), with the SHA-256 of the file recorded in the checkpoints that rely on it;
- `last.pt`, the resume point, every epoch: the tensors that train and the optimiser's state (it does not
  refer to best.pt: a kill between the two writes would leave it pointing at a newer file);
- `best.pt`, on each improvement: the whole model, so it rebuilds the classifier on its own (evaluate,
  predict, export, `--weights RUN` need nothing else).

Frozen VGG-19 for identities: the frozen 80 MB is written once instead of twice per epoch; the head and its
Adam state (1.4 GB, most of it the 25088x4096 layer) are what a resume point cannot do without.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from facetl.errors import FacetlError
from facetl.runfolder import atomic_torch_save, checkpoint_weights, read_torch_file

FROZEN, LAST, BEST = "frozen.pt", "last.pt", "best.pt"


def fixed_keys(model: nn.Module) -> set[str]:
    """State-dict entries training never changes: frozen parameters, and buffers outside trainable batch
    norm (a frozen batch-norm layer keeps its statistics as constant buffers; see models/strategies.py)."""
    trained_buffers = {f"{name}.{b}" if name else b for name, m in model.named_modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) for b, _ in m.named_buffers(recurse=False)}
    keys = {n for n, p in model.named_parameters() if not p.requires_grad}
    keys |= {n for n, _ in model.named_buffers() if n not in trained_buffers}
    return keys & set(model.state_dict())


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointWriter:
    """Writes best.pt, last.pt and (once) frozen.pt for one run folder; rank 0 only."""

    def __init__(self, folder: Path, model: nn.Module, resumed_from: dict | None = None):
        self.folder, self.model = folder, model
        # a resumed run keeps the frozen.pt its resume point checked, rather than rewrite it
        self.frozen_digest: str | None = (resumed_from or {}).get("frozen", {}).get("sha256")

    def save(self, improved: bool, meta: dict, resume_state: dict, evaluated: dict | None = None) -> None:
        """best.pt (on improvement) holds `evaluated`, the weights validation scored (the --ema average), or
        the model's; last.pt the model's own trained tensors and `resume_state` (optimiser, average)."""
        state = self.model.state_dict()
        # what is frozen now: after a gradual unfreezing step, less than when frozen.pt was written (stages only
        # unfreeze), so frozen.pt still holds every tensor last.pt leaves out, unchanged since it was written
        fixed = fixed_keys(self.model)
        if self.frozen_digest is None:
            atomic_torch_save(self.folder / FROZEN, {k: state[k] for k in sorted(fixed)})
            self.frozen_digest = file_digest(self.folder / FROZEN)
        if improved:
            atomic_torch_save(self.folder / BEST, {"model": evaluated or state, **meta})
        atomic_torch_save(self.folder / LAST, {
            "model": {k: v for k, v in state.items() if k not in fixed},
            "frozen": {"file": FROZEN, "sha256": self.frozen_digest}, **resume_state, **meta})


def read_resume_point(folder: Path) -> dict:
    """last.pt with its whole model state put back together from the files it refers to (digests checked)."""
    path = folder / LAST
    if not path.is_file():
        raise FacetlError(f"nothing to resume in {folder}: no last.pt (did the run finish its first epoch?)")
    checkpoint = read_torch_file(path, "resume point ")
    if not isinstance(checkpoint, dict) or not {"model", "optimizer", "epoch", "history", "best"} <= set(checkpoint):
        raise FacetlError(f"cannot resume from {path}: it is not a facetl checkpoint")
    model = checkpoint["model"]
    if "frozen" in checkpoint:
        model = {**_referenced(folder, checkpoint["frozen"], path), **model}
    checkpoint["model"] = checkpoint_weights(model, path)
    return checkpoint


def _referenced(folder: Path, reference, by: Path) -> dict:
    if not isinstance(reference, dict):
        raise FacetlError(f"cannot resume from {by}: its reference to the frozen part is damaged")
    target = folder / str(reference.get("file", ""))
    if target.parent != folder or not target.is_file():
        raise FacetlError(f"cannot resume from {by}: it relies on {target}, which is missing")
    if file_digest(target) != reference.get("sha256"):
        raise FacetlError(f"cannot resume from {by}: {target} is not the file it was written with (its SHA-256 "
                          "differs); it was changed or replaced after that epoch")
    return read_torch_file(target, "frozen part ")
