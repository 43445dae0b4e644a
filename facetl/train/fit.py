"""A training run from a config to a finished run folder: `fit(config) -> RunResult`.

Read top to bottom, a run is four stages, each a function below:
  1. `set_up`: file list -> model and the preprocessing its weights expect -> decoded store -> split;
  2. `choose_source`: where the trainable part's inputs come from (the feature cache, or images);
  3. `run_epochs`: train, validate, checkpoint, once per epoch;
  4. `final_evaluation`: the test split, once, with the best epoch's weights -> metrics, plots, report.

Every epoch is seeded by (seed, epoch), so a resumed run draws the same data order, augmentation
and dropout as an uninterrupted one.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from facetl.config import THRESHOLD_RULES, TrainConfig, dump_yaml
from facetl.data.augment import BatchAugment
from facetl.data.features import FeatureRequest, FrozenPart, ImageSource, open_feature_source
from facetl.data.load import load_groups
from facetl.data.prepare import PreparedData, prepare_data, read_samples
from facetl.errors import FacetlError
from facetl.evaluate.metrics import (choose_threshold, expected_calibration_error, fit_temperature,
                                     negative_log_likelihood, scaled_probabilities)
from facetl.evaluate.report import SplitResult, write_evaluation
from facetl.models import BuiltModel, TrainablePart, build_model
from facetl.record import Calibration, RunRecord
from facetl.runfolder import (RunLock, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text,
                              prepare_run_folder, read_torch_file)
from facetl.runtime import Runtime
from facetl.train.batchnorm import precise_bn_wanted, recompute_batchnorm
from facetl.train.checkpoints import CheckpointWriter, read_resume_point
from facetl.train.loop import Evaluator, NonFiniteLoss, Optimisation, balanced_order, class_weights, train_one_epoch

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


@dataclass
class RunResult:
    folder: Path
    metrics: dict
    history: list[dict]
    record: RunRecord


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
            try:
                tqdm.write(message, file=sys.stdout)
            except OSError:  # stdout closed (`| head`, a closed terminal): train.log keeps everything
                self.quiet = True
                silence_stdout()
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}\n")


def silence_stdout() -> None:
    """Point stdout at /dev/null, so neither later prints nor the exit-time flush fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@dataclass
class RunContext:
    """Where a run writes (its folder and log), whether it shows progress bars, and where it runs."""

    folder: Path
    log: RunLog
    progress: bool
    runtime: Runtime
    pictures: Callable | None = None  # extra pictures of the final split, from a layer above (Grad-CAM)

    @property
    def main(self) -> bool:
        return self.runtime.group.is_main


@dataclass
class Setup:
    built: BuiltModel
    data: PreparedData
    checkpoint: dict | None       # the resume point, when resuming


@dataclass
class TrainingState:
    opt: Optimisation
    scheduler: object | None
    record: RunRecord
    checkpoints: CheckpointWriter
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "score": None})
    start_epoch: int = 1
    train_seconds: float = 0.0


def default_out(config: TrainConfig) -> str:
    return f"runs/{config.backbone}-{config.strategy.replace(':', '')}-{datetime.now():%Y%m%d-%H%M%S}"


def fit(config: TrainConfig, resume: bool = False, progress: bool = True, quiet: bool = False,
        pictures: Callable | None = None) -> RunResult:
    """Train one run into config.out. `pictures(folder, config, record, model, history, split, runtime)`, when
    given, draws extra pictures of the final split before its report is written (facetl.evaluation's Grad-CAM)."""
    config.check()
    runtime = Runtime.for_training(config.device, config.precision)
    try:
        out = config.out or default_out(config)
        if runtime.group.active:  # every rank must write to the folder rank 0 named
            shared = [out]
            torch.distributed.broadcast_object_list(shared, src=0)
            out = shared[0]
        created = not Path(out).exists()
        folder = prepare_run_folder(out)
        config.out = str(folder)
        main = runtime.group.is_main
        ctx = RunContext(folder, RunLog(folder / "train.log" if main else None, quiet or not main),
                         progress and main, runtime, pictures)
        if not main:
            return _fit(config, ctx, resume)
        with RunLock(folder):
            try:
                return _fit(config, ctx, resume)
            except SetupError as exc:
                if created:  # bad input stopped it before any training: leave no half-made run folder
                    shutil.rmtree(folder, ignore_errors=True)
                raise exc.cause from None
    finally:
        runtime.close()


def _fit(config: TrainConfig, ctx: RunContext, resume: bool) -> RunResult:
    began = time.perf_counter()
    setup = set_up(config, ctx, resume)
    prepared = time.perf_counter()
    source = choose_source(config, setup, ctx)
    cached = time.perf_counter()
    state = start_training(config, setup, source.description, ctx)
    run_epochs(config, setup, source, state, ctx)
    state.record.wall_seconds = {"data and model": round(prepared - began, 1),
                                 "frozen features": round(cached - prepared, 1),
                                 "training": round(time.perf_counter() - cached, 1)}
    result = final_evaluation(config, setup, source, state, ctx)
    stages = {**state.record.wall_seconds, "final evaluation": round(time.perf_counter() - began - sum(
        state.record.wall_seconds.values()), 1)}
    ctx.log("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
            + f"; total {time.perf_counter() - began:.1f} s")
    return result


# 1. the model before the data: its weights decide image size and normalisation
def set_up(config: TrainConfig, ctx: RunContext, resume: bool) -> Setup:
    checkpoint = read_resume_point(ctx.folder) if resume else None
    if not resume and (ctx.folder / "last.pt").exists():
        raise FacetlError(f"{ctx.folder} already holds a run; continue it with --resume {ctx.folder} or choose a "
                          "new --out")
    try:
        samples = read_samples(config)
        if len(samples.class_names) > 2 and config.threshold != "0.5":
            raise FacetlError(f"--threshold {config.threshold} applies to two classes; this data has "
                              f"{len(samples.class_names)}, decided by the most probable class")
        torch.manual_seed(config.seed)
        built = build_model(config, len(samples.class_names), ctx.log)
        data = prepare_data(config, samples, built.preprocessing, ctx.folder, ctx.log, ctx.progress,
                            ctx.runtime.group)
    except FacetlError as exc:
        raise SetupError(exc) from None
    if ctx.main:
        record_data_paths(config, ctx.folder)
        atomic_write_text(ctx.folder / "config.yaml", dump_yaml(config))
    built.model.to(ctx.runtime.device, memory_format=torch.channels_last)
    ctx.log(f"model: {config.backbone} + {config.head} head, {built.weights.describe()}; {built.plan.describe()}")
    if not built.weights.pretrained and built.plan.first_trainable is None:
        ctx.log("warning: a frozen backbone with no pretraining is a fixed random function; expect accuracy near "
                "the majority class (use ImageNet weights or a facetl run as --weights, or --strategy full)")
    group = ctx.runtime.group
    ctx.log(f"device {ctx.runtime.used(built.plan.cut > 0).describe()}; preprocessing "
            f"{built.preprocessing.describe()}"
            + (f"; {group.world} processes, batch {config.batch_size} per process" if group.active else ""))
    return Setup(built, data, checkpoint)


def record_data_paths(config: TrainConfig, folder: Path) -> None:
    """Data paths absolute in config.yaml, and relative to the run folder in data_paths.json: a run reopened
    from another directory, or moved together with its data, still finds it (see run.locate_data)."""
    paths = {}
    for key in ("data", "images", "split_file"):
        value = getattr(config, key)
        if value:
            absolute = Path(value).expanduser().resolve()
            setattr(config, key, str(absolute))
            paths[key] = os.path.relpath(absolute, folder.resolve())
    atomic_write_json(folder / "data_paths.json", paths)


# 2. inputs of the trainable part: stored prefix outputs when the prefix is frozen, else computed now
def choose_source(config: TrainConfig, setup: Setup, ctx: RunContext):
    built, data = setup.built, setup.data
    augment = BatchAugment(config.augmentations)
    frozen = FrozenPart(built.model, built.plan.cut)
    cacheable = not augment.active or augment.flip_only or config.cache_views > 0
    if config.cache and frozen.cut > 0 and cacheable:
        index = np.concatenate([data.index("train"), data.index("val"), data.index("test")])
        request = FeatureRequest(data.store, index, data.index("train"), augment, config.cache_views, config.seed)
        source = open_feature_source(frozen, request, built.preprocessing, ctx.runtime, data.cache_dir,
                                     max(config.batch_size, 64), ctx.progress)
    else:
        source = ImageSource(data.store.images, frozen, built.preprocessing, augment, ctx.runtime)
        if frozen.cut > 0:
            source.description += (" (--no-cache)" if not config.cache else
                                   " (jitter/rotate change every epoch; --cache-views K stores K views instead)")
    ctx.log(f"data path: {source.description}")
    return source


def start_training(config: TrainConfig, setup: Setup, data_note: str, ctx: RunContext) -> TrainingState:
    """The optimiser over what trains, and the run's record; or both as the resume point left them."""
    built, runtime = setup.built, ctx.runtime
    part = TrainablePart(built.model, built.plan.cut)
    if runtime.group.active:  # DistributedDataParallel keeps the ranks' gradients in step
        device = runtime.device
        part = torch.nn.parallel.DistributedDataParallel(
            part, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam([p for p in built.model.parameters() if p.requires_grad], lr=config.lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
                 if config.scheduler == "cosine" else None)
    opt = Optimisation(built.model, part, optimizer, runtime.precision.scaler(), runtime.precision,
                       config.batch_size, _class_weights(config, setup, runtime))
    if config.balance != "none":
        ctx.log(_balance_note(config, setup, opt.class_weights))
    state = TrainingState(opt, scheduler, _new_record(config, setup, data_note, runtime),
                          CheckpointWriter(ctx.folder, built.model, setup.checkpoint))
    checkpoint = setup.checkpoint
    if checkpoint is not None:
        built.model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            scheduler.load_state_dict(checkpoint["scheduler"])
            scheduler.T_max = config.epochs  # --epochs N on resume: the cosine goes on over the new total
        state.history, state.best = checkpoint["history"], checkpoint["best"]
        state.start_epoch, state.train_seconds = checkpoint["epoch"] + 1, checkpoint["train_seconds"]
        ctx.log(f"resuming after epoch {checkpoint['epoch']}")
    return state


def _class_weights(config: TrainConfig, setup: Setup, runtime: Runtime) -> torch.Tensor | None:
    if config.balance != "loss":
        return None
    data = setup.data
    return class_weights(data.labels[data.index("train")], len(data.class_names), runtime.device)


def _balance_note(config: TrainConfig, setup: Setup, weights: torch.Tensor | None) -> str:
    if config.balance == "sampler":
        return "balance: every class equally likely in each epoch's draws (--balance sampler, with replacement)"
    values = ", ".join(f"{v:.3g}" for v in weights.tolist())
    kind = f"pos_weight {values} for {setup.data.class_names[1]}" if len(setup.data.class_names) == 2 else \
        f"class weights {values}"
    return f"balance: class-weighted loss, {kind} (--balance loss)"


def _new_record(config: TrainConfig, setup: Setup, data_note: str, runtime: Runtime) -> RunRecord:
    built = setup.built
    title = f"{config.backbone} {config.strategy} on {Path(config.data).name}" + (
        f" ({config.target})" if config.target else "")
    two = len(setup.data.class_names) == 2
    fixed = float(config.threshold) if two and config.threshold not in THRESHOLD_RULES else None
    return RunRecord(title, built.weights, built.preprocessing, setup.data.class_names, built.plan.cut,
                     built.plan.trainable_params, built.plan.total_params, data_note,
                     runtime.used(built.plan.cut > 0), datetime.now().isoformat(timespec="seconds"),
                     threshold=fixed, threshold_rule=config.threshold if two else None)


def _evaluator(config: TrainConfig, setup: Setup, source, runtime: Runtime) -> Evaluator:
    return Evaluator(setup.built.model, setup.built.plan.cut, source, setup.data.labels, runtime.precision,
                     config.batch_size * 2, _class_weights(config, setup, runtime))


def evaluate_split(evaluator: Evaluator, index: np.ndarray, desc: str, ctx: RunContext) -> dict:
    """Each rank evaluates its share; the gathered result equals one process evaluating all of it."""
    group = ctx.runtime.group
    mine = group.shard(index)
    result = evaluator(mine, desc, ctx.progress)
    probs, loss_sum = group.gather_in_order(len(index), result["probs"], result["loss"] * len(mine))
    accuracy = float((probs.argmax(1) == evaluator.labels[index]).mean()) if len(index) else float("nan")
    return {"loss": loss_sum / max(len(index), 1), "acc": accuracy, "probs": probs}


# 3. epochs, each seeded by (seed, epoch) so a resumed run draws what an uninterrupted one would
def run_epochs(config: TrainConfig, setup: Setup, source, state: TrainingState, ctx: RunContext) -> None:
    built, data, group = setup.built, setup.data, ctx.runtime.group
    evaluator = _evaluator(config, setup, source, ctx.runtime)
    precise_bn = precise_bn_wanted(config.precise_bn, built.weights.pretrained, built.plan.trainable_batchnorm)
    if precise_bn and state.start_epoch == 1:
        ctx.log("batch norm: statistics recomputed over training images before each validation (no pretraining; "
                "--precise-bn off to skip)")
    for epoch in range(state.start_epoch, config.epochs + 1):
        began = time.perf_counter()
        order = (group.shard(balanced_order(data.index("train"), data.labels, config.seed, epoch))
                 if config.balance == "sampler" else group.epoch_order(data.index("train"), config.seed, epoch))
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 101 + group.rank)
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + group.rank)  # dropout
        try:
            sums = train_one_epoch(state.opt, source, data.labels, order, generator, f"epoch {epoch}/{config.epochs}",
                                   ctx.progress)
        except NonFiniteLoss as exc:
            kept = "best.pt and last.pt keep the last good epoch" if state.history else "no epoch finished"
            raise FacetlError(f"stopped at epoch {epoch}: {exc}; {kept}") from None
        loss_sum, correct, seen = group.sum(sums["loss_sum"], sums["correct"], sums["seen"])
        if precise_bn:
            recompute_batchnorm(TrainablePart(built.model, built.plan.cut), source, data.index("train"),
                                config.batch_size, ctx.runtime.precision, config.seed)
        val = evaluate_split(evaluator, data.index("val"), "validate", ctx)
        if state.scheduler is not None:
            state.scheduler.step()
        seconds = time.perf_counter() - began
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": val["loss"],
               "val_acc": val["acc"], "seconds": seconds}
        _end_epoch(config, state, row, ctx)


def _end_epoch(config: TrainConfig, state: TrainingState, row: dict, ctx: RunContext) -> None:
    """Record the epoch, choose the best, write checkpoints and history (rank 0), and wait for them."""
    state.history.append(row)
    state.train_seconds += row["seconds"]
    score = -row["val_loss"] if config.select == "val_loss" else row["val_acc"]
    improved = state.best["score"] is None or score > state.best["score"]
    if improved:
        state.best = {"epoch": row["epoch"], "score": float(score)}
    state.record.best_epoch, state.record.train_seconds = state.best["epoch"], round(state.train_seconds, 2)
    ctx.log(f"epoch {row['epoch']:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  {row['seconds']:.1f}s"
            + ("  *best" if improved else ""))
    if ctx.main:
        meta = {"config": config.to_dict(), "record": state.record.to_dict(), "epoch": row["epoch"],
                "history": state.history, "best": state.best, "train_seconds": state.train_seconds}
        state.checkpoints.save(improved, meta, state.opt.optimizer.state_dict(),
                               state.scheduler.state_dict() if state.scheduler else None)
        atomic_write_csv(ctx.folder / "history.csv", HISTORY_COLUMNS,
                         [[h[c] if c == "epoch" else f"{h[c]:.6f}" for c in HISTORY_COLUMNS] for h in state.history])
    ctx.runtime.group.barrier()  # checkpoints are complete before any rank goes on


# 4. the test split, once, with the best epoch's weights
def final_evaluation(config: TrainConfig, setup: Setup, source, state: TrainingState, ctx: RunContext) -> RunResult:
    model, data = setup.built.model, setup.data
    best = read_torch_file(ctx.folder / "best.pt", "checkpoint ")
    model.load_state_dict(best["model"])
    evaluator = _evaluator(config, setup, source, ctx.runtime)
    if config.calibrate == "temperature":  # before the threshold: a threshold is chosen on calibrated probabilities
        state.record.temperature, state.record.calibration = calibrate(evaluator, data, ctx)
        evaluator.temperature = state.record.temperature
        ctx.log(state.record.calibration.describe())
    if state.record.threshold_rule in THRESHOLD_RULES:  # chosen on validation, with the best epoch's weights
        val = evaluate_split(evaluator, data.index("val"), "validate", ctx)
        state.record.threshold = choose_threshold(data.labels[data.index("val")], val["probs"],
                                                  state.record.threshold_rule)
        ctx.log(f"threshold {state.record.threshold:.4f}: maximises {state.record.threshold_rule.replace('f1', 'F1')}"
                f"{' accuracy' if state.record.threshold_rule == 'balanced' else ''} on the validation split")
    if ctx.main and (state.record.threshold_rule in THRESHOLD_RULES or config.calibrate != "none"):
        atomic_torch_save(ctx.folder / "best.pt", {**best, "record": state.record.to_dict()})  # what predict reads
    final_split, final_index = ("test", data.index("test")) if len(data.index("test")) else ("val", data.index("val"))
    result = evaluate_split(evaluator, final_index, final_split, ctx)
    if not ctx.main:
        return RunResult(ctx.folder, {}, state.history, state.record)
    atomic_write_json(ctx.folder / "run.json", state.record.to_dict())
    split = SplitResult(final_split, data.labels[final_index], result["probs"],
                        StoreRows(data.store.images, final_index), [data.samples.paths[i] for i in final_index],
                        final_groups(config, data, final_index), config.groups)
    if ctx.pictures is not None:
        ctx.pictures(ctx.folder, config, state.record, model, state.history, split, ctx.runtime)
    metrics = write_evaluation(ctx.folder, split, state.record, state.history, config.to_dict())
    ctx.log(f"{final_split}: accuracy {metrics['accuracy']:.4f}  balanced {metrics['balanced_accuracy']:.4f}  "
            f"F1 {metrics['f1']:.4f}  ROC-AUC "
            f"{metrics['roc_auc'] if metrics['roc_auc'] is None else round(metrics['roc_auc'], 4)}  "
            f"ECE {metrics['ece']:.4f}  train {state.train_seconds:.1f}s  report {ctx.folder / 'report.md'}")
    return RunResult(ctx.folder, metrics, state.history, state.record)


def calibrate(evaluator: Evaluator, data: PreparedData, ctx: RunContext) -> tuple[float, Calibration]:
    """--calibrate temperature: one T fitted on the validation split's logits (lowest NLL), and what it changed
    there. Every rank fits on the same gathered logits, so all agree on T."""
    index = data.index("val")
    group = ctx.runtime.group
    mine = evaluator(group.shard(index), "calibrate", ctx.progress)["logits"]
    logits, _ = group.gather_in_order(len(index), mine, 0.0)
    labels = data.labels[index]
    t = fit_temperature(logits, labels)
    return t, Calibration(t, "val", len(index),
                          expected_calibration_error(labels, scaled_probabilities(logits)),
                          expected_calibration_error(labels, scaled_probabilities(logits, t)),
                          negative_log_likelihood(logits, labels), negative_log_likelihood(logits, labels, t))


def final_groups(config: TrainConfig, data: PreparedData, index: np.ndarray) -> list[str] | None:
    """--groups: the group of each image of the final split (checked when the data was read)."""
    if not config.groups:
        return None
    group_of = load_groups(config.data, config.images, config.target, config.groups)
    return [group_of.get(data.samples.paths[i], "(none)") for i in index]


class StoreRows:
    """Rows `index` of the image store, read only when asked for: the error gallery shows a couple of
    dozen images, so the whole test split is never loaded at once."""

    def __init__(self, images: np.ndarray, index: np.ndarray):
        self.images, self.index = images, index

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[self.index[i]]

    def __len__(self) -> int:
        return len(self.index)
