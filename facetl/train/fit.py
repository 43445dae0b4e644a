"""A training run from a config to a finished run folder: `fit(config) -> RunResult`.

Read top to bottom, one image's path is: file list -> decoded store -> split -> (frozen prefix, cached
or not) -> trainable part -> history, checkpoints -> test metrics, plots, report.

Every epoch is seeded by (seed, epoch), so a resumed run draws the same data order, augmentation
and dropout as an uninterrupted one.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from facetl.config import TrainConfig, dump_yaml
from facetl.data.augment import BatchAugment
from facetl.data.prepare import prepare_data, read_samples
from facetl.errors import FacetlError
from facetl.evaluate.report import write_evaluation
from facetl.models import build_model
from facetl.models.classifier import TrainablePart
from facetl.runfolder import (RunLock, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text,
                              prepare_run_folder, read_torch_file)
from facetl.train.loop import NonFiniteLoss, evaluate, train_one_epoch
from facetl.train.distributed import Dist, init_distributed, shutdown_distributed
from facetl.train.sources import ImageSource, Precision, open_feature_source

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


@dataclass
class RunResult:
    folder: Path
    metrics: dict
    history: list[dict]
    run_info: dict


class StoreRows:
    """Rows `index` of the image store, read only when asked for: the error gallery shows a couple of
    dozen images, so the whole test split is never loaded at once."""

    def __init__(self, images: np.ndarray, index: np.ndarray):
        self.images, self.index = images, index

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[self.index[i]]

    def __len__(self) -> int:
        return len(self.index)


class SetupError(Exception):
    """Bad input found before training started; carries the user-facing FacetlError."""

    def __init__(self, cause: FacetlError):
        super().__init__(str(cause))
        self.cause = cause


class RunLog:
    """Prints a line (above any progress bar) and appends it to the run's train.log."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.path, self.quiet = path, quiet

    def __call__(self, message: str) -> None:
        from tqdm import tqdm

        if not self.quiet:
            tqdm.write(message, file=sys.stdout)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}\n")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FacetlError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FacetlError("--device mps: Apple's MPS is not available (use --device cpu or auto)")
    return torch.device(name)


def default_out(config: TrainConfig) -> str:
    return f"runs/{config.backbone}-{config.strategy.replace(':', '')}-{datetime.now():%Y%m%d-%H%M%S}"


def fit(config: TrainConfig, resume: bool = False, progress: bool = True, quiet: bool = False) -> RunResult:
    config.check()
    group, device_name = init_distributed(config.device)
    try:
        out = config.out or default_out(config)
        if group.active:  # every rank must write to the folder rank 0 named
            shared = [out]
            torch.distributed.broadcast_object_list(shared, src=0)
            out = shared[0]
        created = not Path(out).exists()
        folder = prepare_run_folder(out)
        config.out = str(folder)
        log = RunLog(folder / "train.log" if group.is_main else None, quiet or not group.is_main)
        progress = progress and group.is_main
        if not group.is_main:
            return _fit(config, folder, resume, progress, log, group, device_name)
        with RunLock(folder):
            try:
                return _fit(config, folder, resume, progress, log, group, device_name)
            except SetupError as exc:
                if created:  # bad input stopped it before any training: leave no half-made run folder
                    shutil.rmtree(folder, ignore_errors=True)
                raise exc.cause from None
    finally:
        shutdown_distributed(group)


def _fit(config: TrainConfig, folder: Path, resume: bool, progress: bool, log: RunLog, group: Dist,
         device_name: str) -> RunResult:
    checkpoint = _load_resume_point(folder) if resume else None
    if not resume and (folder / "last.pt").exists():
        raise FacetlError(f"{folder} already holds a run; continue it with --resume {folder} or choose a new --out")
    main = group.is_main

    # 1. the model before the data: its pretrained configuration decides image size and normalisation
    try:
        samples = read_samples(config)
        torch.manual_seed(config.seed)
        model, plan, img_size = build_model(config, len(samples.class_names), log)
        data = prepare_data(config, samples, img_size, folder, log, progress, group)
        device = resolve_device(device_name)
    except FacetlError as exc:
        raise SetupError(exc) from None
    if main:
        atomic_write_text(folder / "config.yaml", dump_yaml(config))
    precision = Precision(config.precision, device)
    model.to(device, memory_format=torch.channels_last)
    mean, std = data.normalization(model.backbone)
    log(f"model: {config.backbone} + {config.head} head, {model.weights_note}; {plan.describe()}")
    if model.weights_note == "no pretraining" and plan.first_trainable is None:
        log("warning: a frozen backbone with no pretraining is a fixed random function; expect accuracy near "
            "the majority class (use ImageNet weights, or --strategy full)")
    precision_note = precision.describe() if plan.cut > 0 else precision.name  # no frozen part: one precision
    log(f"device {device}, precision {precision_note}, image size {img_size}, normalisation mean {mean} std {std}"
        + (f"; {group.world} processes, batch {config.batch_size} per process" if group.active else ""))

    # 2. inputs of the trainable part: stored prefix outputs when the prefix is frozen, else computed now
    augment = BatchAugment(config.augmentations)
    train_index, val_index, test_index = data.index("train"), data.index("val"), data.index("test")
    use_cache = config.cache and plan.cut > 0 and (not augment.active or augment.flip_only or config.cache_views > 0)
    if use_cache:
        source = open_feature_source(model, plan.cut, data.store.images, data.store.key,
                                     np.concatenate([train_index, val_index, test_index]), train_index, mean, std,
                                     augment, config.cache_views, config.seed, device, precision,
                                     data.cache_dir, max(config.batch_size, 64), progress, group)
    else:
        source = ImageSource(data.store.images, model, plan.cut, mean, std, augment, device, precision)
    data_note = source.description
    if not use_cache and plan.cut > 0:
        data_note += (" (--no-cache)" if not config.cache else
                      " (jitter/rotate change every epoch; --cache-views K stores K views instead)")
    log(f"data path: {data_note}")

    # 3. optimiser over what trains; DistributedDataParallel keeps the ranks' gradients in step
    part = TrainablePart(model, plan.cut)
    if group.active:
        part = torch.nn.parallel.DistributedDataParallel(
            part, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
                 if config.scheduler == "cosine" else None)
    scaler = precision.scaler()
    history: list[dict] = []
    best = {"epoch": None, "score": None}
    start_epoch, train_seconds = 1, 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            scheduler.load_state_dict(checkpoint["scheduler"])
        history, best = checkpoint["history"], checkpoint["best"]
        start_epoch, train_seconds = checkpoint["epoch"] + 1, checkpoint["train_seconds"]
        log(f"resuming after epoch {checkpoint['epoch']}")

    def evaluate_split(index: np.ndarray, desc: str) -> dict:
        """Each rank evaluates its share; the gathered result equals one process evaluating all of it."""
        mine = group.shard(index)
        result = evaluate(model, source, data.labels, mine, precision, plan.cut, config.batch_size * 2, desc,
                          progress)
        probs, loss_sum = group.gather_in_order(len(index), result["probs"], result["loss"] * len(mine))
        accuracy = float((probs.argmax(1) == data.labels[index]).mean()) if len(index) else float("nan")
        return {"loss": loss_sum / max(len(index), 1), "acc": accuracy, "probs": probs}

    run_info = {
        "title": f"{config.backbone} {config.strategy} on {Path(config.data).name}"
                 + (f" ({config.target})" if config.target else ""),
        "weights_note": model.weights_note, "trainable_params": plan.trainable_params,
        "total_params": plan.total_params, "data_path_note": data_note, "img_size": img_size,
        "mean": list(mean), "std": list(std), "class_names": data.class_names, "cut": plan.cut,
        "precision": precision_note, "device": str(device), "processes": group.world,
    }

    # 4. epochs, each seeded by (seed, epoch) so a resumed run draws what an uninterrupted one would
    for epoch in range(start_epoch, config.epochs + 1):
        began = time.perf_counter()
        order = group.epoch_order(train_index, config.seed, epoch)
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 101 + group.rank)
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + group.rank)  # dropout
        try:
            sums = train_one_epoch(model, part, source, data.labels, order, optimizer, scaler, precision,
                                   config.batch_size, generator, f"epoch {epoch}/{config.epochs}", progress)
        except NonFiniteLoss as exc:
            kept = "best.pt and last.pt keep the last good epoch" if history else "no epoch finished"
            raise FacetlError(f"stopped at epoch {epoch}: {exc}; {kept}. Try a lower --lr") from None
        loss_sum, correct, seen = group.sum(sums["loss_sum"], sums["correct"], sums["seen"])
        val = evaluate_split(val_index, "validate")
        if scheduler is not None:
            scheduler.step()
        seconds = time.perf_counter() - began
        train_seconds += seconds
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": val["loss"],
               "val_acc": val["acc"], "seconds": seconds}
        history.append(row)
        score = -val["loss"] if config.select == "val_loss" else val["acc"]
        improved = best["score"] is None or score > best["score"]
        if improved:
            best = {"epoch": epoch, "score": score}
        log(f"epoch {epoch:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {val['loss']:.4f} acc {val['acc']:.4f}  {seconds:.1f}s" + ("  *best" if improved else ""))
        if main:
            meta = {"config": config.to_dict(), "run_info": run_info, "epoch": epoch, "history": history,
                    "best": best, "train_seconds": train_seconds}
            if improved:
                atomic_torch_save(folder / "best.pt", {"model": model.state_dict(), **meta})
            atomic_torch_save(folder / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None, **meta})
            atomic_write_csv(folder / "history.csv", HISTORY_COLUMNS,
                             [[h[c] if c == "epoch" else f"{h[c]:.6f}" for c in HISTORY_COLUMNS] for h in history])
        group.barrier()  # checkpoints are complete before any rank goes on

    # 5. the test split, once, with the best epoch's weights
    model.load_state_dict(torch.load(folder / "best.pt", map_location=device, weights_only=False)["model"])
    run_info.update({"best_epoch": best["epoch"], "train_seconds": round(train_seconds, 2)})
    final_split, final_index = ("test", test_index) if len(test_index) else ("val", val_index)
    result = evaluate_split(final_index, final_split)
    if not main:
        return RunResult(folder, {}, history, run_info)
    atomic_write_json(folder / "run.json", run_info)
    metrics = write_evaluation(folder, final_split, data.labels[final_index], result["probs"],
                               StoreRows(data.store.images, final_index), data.class_names, history, run_info,
                               config.to_dict())
    log(f"{final_split}: accuracy {metrics['accuracy']:.4f}  F1 {metrics['f1']:.4f}  ROC-AUC "
        f"{metrics['roc_auc'] if metrics['roc_auc'] is None else round(metrics['roc_auc'], 4)}  "
        f"train {train_seconds:.1f}s  report {folder / 'report.md'}")
    return RunResult(folder, metrics, history, run_info)


def _load_resume_point(folder: Path) -> dict:
    path = folder / "last.pt"
    if not path.is_file():
        raise FacetlError(f"nothing to resume in {folder}: no last.pt (did the run finish its first epoch?)")
    return read_torch_file(path)
