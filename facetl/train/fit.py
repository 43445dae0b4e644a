"""A training run from a config to a finished run folder: `fit(config) -> RunResult`.

Read top to bottom, a run is four stages, each a function below:
  1. `set_up`: file list -> model and the preprocessing its weights expect -> decoded store -> split;
  2. `choose_source`: where the trainable part's inputs come from (the feature cache, or images);
  3. `run_epochs`: train, validate, checkpoint, once per epoch;
  4. `final_evaluation`: the test split, once, with the best epoch's weights -> metrics, plots, report.

Every epoch is seeded by (seed, epoch), so a resumed run draws the same data order, augmentation
and dropout as an uninterrupted one.

The config given is never changed: the run folder, the recipe's choices, --lr auto's LR and the absolute data
paths make new configs, and the resolved one is what config.yaml and `RunResult.config` hold.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from facetl.config import (BEFORE_RECIPE, DATA_PATH_KEYS, THRESHOLD_RULES, TrainConfig, dump_yaml, parse_unfreeze,
                           with_absolute_paths)
from facetl.data.augment import BatchAugment
from facetl.data.features import FeatureRequest, FrozenPart, ImageSource, open_feature_source
from facetl.data.load import load_groups
from facetl.data.prepare import PreparedData, prepare_data, read_samples
from facetl.data.spec import data_spec
from facetl.errors import FacetlError
from facetl.history import EPOCH, LR, SECONDS, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from facetl import history as epoch_history
from facetl.evaluate.metrics import (choose_threshold, choose_thresholds, expected_calibration_error,
                                     fit_temperature, metric_line, negative_log_likelihood, scaled_probabilities)
from facetl.evaluate.plots import plot_lr_find
from facetl.evaluate.report import SplitResult, write_evaluation
from facetl.models import BuiltModel, TrainablePart, build_model
from facetl.models.strategies import apply_strategy, first_trainable_layer
from facetl.record import Calibration, RunRecord
from facetl.runfolder import (RunLock, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text,
                              prepare_run_folder, read_torch_file)
from facetl.outputs import data_reads, refuse_misplaced
from facetl.runtime import Runtime
from facetl.train.batchnorm import precise_bn_wanted, recompute_batchnorm
from facetl.train.checkpoints import CheckpointWriter, read_resume_point
from facetl.train.ema import WeightAverage
from facetl.train.lrfind import range_test
from facetl.train.loop import (Evaluator, NonFiniteLoss, Optimisation, accuracy, balanced_order, class_weights,
                               train_one_epoch)
from facetl.train.callbacks import Callbacks, FinalSplit, RunInfo, check_callbacks
from facetl.train.progress_bars import ProgressBars, draws_progress
from facetl.train.optim import (carry_state, describe_groups, make_optimizer, parameter_groups,
                                set_learning_rates)
from facetl.train.recipe import complete_recipe
from facetl.train.schedule import Stage, lr_factor, stage_at, stages



@dataclass
class RunResult:
    folder: Path
    metrics: dict
    history: list[dict]
    record: RunRecord
    config: TrainConfig | None = None  # the resolved configuration the run trained with (its config.yaml)


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
    """Where a run writes (its folder and log), where it runs, and who hears of it."""

    folder: Path
    log: RunLog
    progress: bool  # bars while images and features are prepared; the steps of training go to the callbacks
    runtime: Runtime
    callbacks: Callbacks = field(default_factory=lambda: Callbacks((), print))  # rank 0's; none on other ranks

    @property
    def main(self) -> bool:
        return self.runtime.group.is_main

    def steps(self, stage: str, unit: str = "batch"):
        """What wraps a stage's steps (fit's loops take it): each step through is told to the callbacks."""
        return lambda items: self.callbacks.steps(items, stage, unit)


@dataclass
class Setup:
    config: TrainConfig           # resolved: the recipe's choices filled in, data paths absolute
    built: BuiltModel
    data: PreparedData
    checkpoint: dict | None       # the resume point, when resuming
    recipe: list[str] = field(default_factory=list)  # what the recipe chose for keys left out, and why


@dataclass
class TrainingState:
    opt: Optimisation
    record: RunRecord
    checkpoints: CheckpointWriter
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "score": None})
    start_epoch: int = 1
    train_seconds: float = 0.0
    validation_seconds: float = 0.0  # of this invocation's epochs: validation (and precise batch norm) alone


def default_out(config: TrainConfig) -> str:
    return f"runs/{config.backbone}-{config.strategy.replace(':', '')}-{datetime.now():%Y%m%d-%H%M%S}"


def check_output_places(config: TrainConfig, out: str | Path, flag: str = "--out", run: bool = True,
                        callbacks: Sequence = ()) -> None:
    """Before any work, every place a training command writes, by the one rule (facetl.outputs.refuse_misplaced):
    OUT, a run folder (`run`) or a sweep's, folds' or study's folder of runs, and the callbacks' places (a tracker's),
    never an input, never inside the data (its plots would be the next run's images), never inside another run."""
    reads = data_reads(config.data, config.images)
    own = out if run else None
    refuse_misplaced(out, flag, reads, own)
    check_callbacks(callbacks, dataclasses.replace(config, out=str(out)), reads, own)


def fit(config: TrainConfig, resume: bool = False, progress: bool = True, quiet: bool = False,
        only_find_lr: bool = False, callbacks: Sequence = ()) -> RunResult:
    """Train one run into config.out. `callbacks` (facetl.train.callbacks: trackers, a search's pruner, pictures of
    the final split) hear of the run's start, each epoch, the final split and its end, on rank 0 only; each is
    closed when the run ends, finished or failed. `progress`: bars while data is prepared, and ProgressBars for the
    steps unless a callback handed over hears them itself. `only_find_lr`: stop after the LR range test (facetl lr-find);
    metrics then hold {"suggested_lr": ...}."""
    config.check()
    runtime = Runtime.for_training(config.device, config.precision)
    try:
        out = config.out or default_out(config)
        if runtime.group.active:  # every rank must write to the folder rank 0 named
            shared = [out]
            torch.distributed.broadcast_object_list(shared, src=0)
            out = shared[0]
        check_output_places(config, out, "--out" if config.out else "the default --out", callbacks=callbacks)
        created = not Path(out).exists()
        folder = prepare_run_folder(out)
        config = dataclasses.replace(config, out=str(folder))
        main = runtime.group.is_main
        log = RunLog(folder / "train.log" if main else None, quiet or not main)
        callbacks = [*callbacks, ProgressBars()] if progress and not any(map(draws_progress, callbacks)) \
            else list(callbacks)
        ctx = RunContext(folder, log, progress and main, runtime, Callbacks(callbacks if main else (), log))
        if not main:
            return _fit(config, ctx, resume, only_find_lr)
        with RunLock(folder):
            try:
                return _fit(config, ctx, resume, only_find_lr)
            except SetupError as exc:
                if created:  # bad input stopped it before any training: leave no half-made run folder
                    shutil.rmtree(folder, ignore_errors=True)
                raise exc.cause from None
            finally:
                ctx.callbacks.close()
    finally:
        runtime.close()


def _fit(config: TrainConfig, ctx: RunContext, resume: bool, only_find_lr: bool = False) -> RunResult:
    began = time.perf_counter()
    setup = set_up(config, ctx, resume)
    config = setup.config
    prepared = time.perf_counter()
    source = choose_source(config, setup, ctx)
    if only_find_lr or config.lr == "auto":
        suggested = find_lr(config, setup, source, ctx)
        if only_find_lr:
            return RunResult(ctx.folder, {"suggested_lr": suggested, **later_stages_lr(config, setup, ctx)}, [], None,
                             config)
        config = setup.config = dataclasses.replace(config, lr=float(f"{suggested:.2g}"))
        setup.recipe.append(f"lr {config.lr:g} (--lr auto: the LR range test's steepest descent, lr_find.png)")
        if ctx.main:
            atomic_write_text(ctx.folder / "config.yaml", dump_yaml(config))
    cached = time.perf_counter()
    state = start_training(config, setup, source.description, ctx)
    ctx.callbacks.fit_start(RunInfo(ctx.folder, config, state.record, state.start_epoch - 1, ctx.runtime, ctx.log))
    source = run_epochs(config, setup, source, state, ctx)
    state.record.wall_seconds = {"data and model": round(prepared - began, 1),
                                 "frozen features": round(cached - prepared, 1),
                                 "training": round(time.perf_counter() - cached - state.validation_seconds, 1),
                                 "validation": round(state.validation_seconds, 1)}
    result = dataclasses.replace(final_evaluation(config, setup, source, state, ctx), config=config)
    ctx.callbacks.fit_end(result.metrics)
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
        samples = read_samples(data_spec(config))
        if len(samples.class_names) > 2 and config.threshold != "0.5" and not samples.multi_attribute:
            raise FacetlError(f"--threshold {config.threshold} applies to two classes; this data has "
                              f"{len(samples.class_names)}, decided by the most probable class")
        torch.manual_seed(config.seed)
        if checkpoint is not None:
            config = resumed_recipe(config)
        # a resumed gradual run is rebuilt as its last finished epoch trained, optimiser included; the next epoch
        # then takes its unfreezing step as an uninterrupted run would
        automatic = config.strategy == "auto"  # the recipe picks it once the weights are known: built frozen till then
        built = build_model(config, len(samples.class_names), ctx.log,
                            strategy="frozen" if automatic else first_strategy(config, checkpoint["epoch"] if checkpoint
                                                                               else 1),
                            class_names=samples.class_names)
        train_images = round(len(samples.paths) * config.split[0] if not config.limit else
                             config.limit * config.split[0])
        config, recipe = complete_recipe(config, built.weights, train_images, ctx.runtime.device.type)
        if automatic:
            built.plan = apply_strategy(built.model, first_strategy(config, 1))
        check_stages_unfreeze(config, built)
        data = prepare_data(data_spec(config), samples, built.preprocessing, ctx.folder, ctx.log, ctx.progress,
                            ctx.runtime.group)
    except FacetlError as exc:
        raise SetupError(exc) from None
    config = with_absolute_paths(config)
    if ctx.main:
        record_data_paths(config, ctx.folder)
        atomic_write_text(ctx.folder / "config.yaml", dump_yaml(config))
    built.model.to(ctx.runtime.device, memory_format=torch.channels_last)
    for line in recipe:
        ctx.log(line)
    ctx.log(f"model: {config.backbone} + {config.head} head, {built.weights.describe()}; {built.plan.describe()}")
    if not built.weights.pretrained and built.plan.first_trainable is None:
        ctx.log("warning: a frozen backbone with no pretraining is a fixed random function; expect accuracy near "
                "the majority class (use ImageNet weights or a facetl run as --weights, or --strategy full)")
    group = ctx.runtime.group
    ctx.log(f"device {ctx.runtime.used(built.plan.cut > 0).describe()}; preprocessing "
            f"{built.preprocessing.describe()}"
            + (f"; {group.world} processes, batch {config.batch_size} per process" if group.active else ""))
    return Setup(config, built, data, checkpoint, recipe)


def first_strategy(config: TrainConfig, epoch: int) -> str:
    """What trains at `epoch`: the strategy, or for a gradual run its stage's (the recipe's first is frozen)."""
    if config.strategy != "gradual":
        return config.strategy
    if config.unfreeze is None or config.epochs is None:  # before the recipe: its stages start frozen
        return "frozen" if config.unfreeze is None else parse_unfreeze(config.unfreeze)[0][1]
    return stage_at(config, epoch).strategy


def check_stages_unfreeze(config: TrainConfig, built: BuiltModel) -> None:
    """Each stage trains at least what the one before it did: checkpoints rely on it (train/checkpoints.py)."""
    before = None
    for stage in stages(config):
        first = first_trainable_layer(built.model.backbone, stage.strategy)
        first = float("inf") if first is None else first
        if before is not None and first > before[0]:
            raise FacetlError(f"unfreeze: the stage at epoch {stage.first_epoch} ({stage.strategy}) trains less than "
                              f"the one before it ({before[1]}); stages may only unfreeze more")
        before = (first, stage.strategy)


def resumed_recipe(config: TrainConfig) -> TrainConfig:
    """A run made before these keys existed trained with Adam, no weight decay, one LR: resume it so."""
    return dataclasses.replace(config, **{key: value for key, value in {**BEFORE_RECIPE, "scheduler": "none"}.items()
                                          if getattr(config, key) is None})


def record_data_paths(config: TrainConfig, folder: Path) -> None:
    """Data paths relative to the run folder in data_paths.json, beside the absolute ones of config.yaml
    (config.with_absolute_paths): a run reopened from another directory, or moved together with its data, still
    finds it (see runreader.locate_data)."""
    paths = {key: os.path.relpath(getattr(config, key), folder.resolve()) for key in DATA_PATH_KEYS
             if getattr(config, key)}
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


def find_lr(config: TrainConfig, setup: Setup, source, ctx: RunContext, strategy: str | None = None) -> float:
    """The LR range test over what trains now, written to lr_find.png and lr_find.csv (lr_find-STRATEGY.* for a
    later gradual stage)."""
    if ctx.runtime.group.active:
        raise FacetlError("--lr auto and lr-find run in one process: find the LR first, then pass it with --nproc")
    probe = dataclasses.replace(config, lr=1e-3)  # only the groups' ratios matter: the test sets the LRs itself
    test = range_test(_optimisation(probe, setup, ctx, None), source, setup.data.labels, setup.data.index("train"),
                      config.seed, wrap_steps=ctx.steps("LR range test", "step"))
    name = "lr_find" + (f"-{strategy.replace(':', '')}" if strategy else "")
    atomic_write_csv(ctx.folder / f"{name}.csv", ["lr", "loss", "smoothed_loss"], test.rows())
    plot_lr_find(test.lrs, test.losses, test.smoothed, test.suggestion, ctx.folder / f"{name}.png",
                 title=f"LR range test: {config.backbone}, {strategy or first_strategy(config, 1)}", rule=test.rule)
    ctx.log(f"LR range test ({strategy or first_strategy(config, 1)}): {len(test.lrs)} steps; suggested lr "
            f"{test.suggestion:.2g} ({test.rule}; plot {ctx.folder / f'{name}.png'})")
    return test.suggestion


def later_stages_lr(config: TrainConfig, setup: Setup, ctx: RunContext) -> dict[str, float]:
    """facetl lr-find --strategy gradual: the range test of each later stage's unfrozen part too (from the
    starting weights: the head is not trained first), so each stage's LR can be set with the ratios it needs."""
    found = {}
    for stage in stages(config)[1:]:
        setup.built.plan = apply_strategy(setup.built.model, stage.strategy)
        setup.built.model.to(ctx.runtime.device, memory_format=torch.channels_last)
        found[stage.strategy] = find_lr(config, setup, choose_source(config, setup, ctx), ctx, stage.strategy)
    return found


def start_training(config: TrainConfig, setup: Setup, data_note: str, ctx: RunContext) -> TrainingState:
    """The optimiser over what trains, and the run's record; or both as the resume point left them."""
    built = setup.built
    ema = WeightAverage(built.model, config.ema) if config.ema else None
    opt = _optimisation(config, setup, ctx, ema)
    if config.balance != "none":
        ctx.log(_balance_note(config, setup, opt.class_weights))
    state = TrainingState(opt, _new_record(config, setup, data_note, ctx.runtime),
                          CheckpointWriter(ctx.folder, built.model, setup.checkpoint))
    checkpoint = setup.checkpoint
    if checkpoint is not None:
        built.model.load_state_dict(checkpoint["model"])
        opt.optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None and checkpoint.get("ema"):
            ema.load_state_dict(checkpoint["ema"])
        state.history, state.best = checkpoint["history"], checkpoint["best"]
        state.start_epoch, state.train_seconds = checkpoint["epoch"] + 1, checkpoint["train_seconds"]
        # as the epochs left them: a run killed after its last epoch trains none now, and still records these
        state.record.best_epoch, state.record.train_seconds = state.best["epoch"], round(state.train_seconds, 2)
        ctx.log(f"resuming after epoch {checkpoint['epoch']}")
    ctx.log(f"optimiser {config.optimizer}, {describe_groups(opt.optimizer)}, weight decay {config.weight_decay:g}, "
            f"{config.scheduler} schedule" + (f", EMA {config.ema:g}" if ema else "")
            + (f", label smoothing {config.label_smoothing:g}" if config.label_smoothing else ""))
    return state


def _optimisation(config: TrainConfig, setup: Setup, ctx: RunContext, ema: WeightAverage | None,
                  previous: Optimisation | None = None) -> Optimisation:
    """The trainable part (DDP-wrapped when distributed) and an optimiser over its parameter groups; after an
    unfreezing step, the parameters that trained before keep their optimiser moments."""
    built, runtime = setup.built, ctx.runtime
    part = TrainablePart(built.model, built.plan.cut)
    if runtime.group.active:  # DistributedDataParallel keeps the ranks' gradients in step
        device = runtime.device
        part = torch.nn.parallel.DistributedDataParallel(
            part, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:  # --compile: the trainable part's graph compiled once, then run fused (PyTorch's inductor)
        part = torch.compile(part)
    optimizer = make_optimizer(config.optimizer, parameter_groups(built.model, config.lr, config.lr_decay,
                                                                  config.weight_decay))
    carry_state(previous.optimizer if previous else None, optimizer)
    scaler = previous.scaler if previous else runtime.precision.scaler()
    return Optimisation(built.model, part, optimizer, scaler, runtime.precision, config.batch_size,
                        _class_weights(config, setup, runtime), config.label_smoothing, None, ema)


def _class_weights(config: TrainConfig, setup: Setup, runtime: Runtime) -> torch.Tensor | None:
    if config.balance != "loss":
        return None
    data = setup.data
    return class_weights(data.labels[data.index("train")], len(data.class_names), runtime.device)


def _balance_note(config: TrainConfig, setup: Setup, weights: torch.Tensor | None) -> str:
    if config.balance == "sampler":
        return "balance: every class equally likely in each epoch's draws (--balance sampler, with replacement)"
    values = ", ".join(f"{v:.3g}" for v in weights.tolist())
    if setup.data.samples.multi_attribute:
        return "balance: class-weighted loss, pos_weight per attribute " + ", ".join(
            f"{name} {v:.3g}" for name, v in zip(setup.data.class_names, weights.tolist())) + " (--balance loss)"
    kind = f"pos_weight {values} for {setup.data.class_names[1]}" if len(setup.data.class_names) == 2 else \
        f"class weights {values}"
    return f"balance: class-weighted loss, {kind} (--balance loss)"


def _new_record(config: TrainConfig, setup: Setup, data_note: str, runtime: Runtime) -> RunRecord:
    built = setup.built
    title = f"{config.backbone} {config.strategy} on {Path(config.data).name}" + (
        f" ({config.target})" if config.target else "")
    multi = setup.data.samples.multi_attribute
    two = len(setup.data.class_names) == 2 and not multi
    fixed = float(config.threshold) if config.threshold not in THRESHOLD_RULES else None
    return RunRecord(title, built.weights, built.preprocessing, setup.data.class_names, built.plan.cut,
                     built.plan.trainable_params, built.plan.total_params, data_note,
                     runtime.used(built.plan.cut > 0), datetime.now().isoformat(timespec="seconds"),
                     threshold=fixed if two else None, threshold_rule=config.threshold if two or multi else None,
                     recipe=setup.recipe, task="multi-attribute" if multi else "classes",
                     thresholds=[fixed or 0.5] * len(setup.data.class_names) if multi else None)


def _evaluator(config: TrainConfig, setup: Setup, source, runtime: Runtime) -> Evaluator:
    return Evaluator(setup.built.model, setup.built.plan.cut, source, setup.data.labels, runtime.precision,
                     config.batch_size * 2, _class_weights(config, setup, runtime))


def evaluate_split(evaluator: Evaluator, index: np.ndarray, desc: str, ctx: RunContext) -> dict:
    """Each rank evaluates its share; the gathered result equals one process evaluating all of it."""
    group = ctx.runtime.group
    mine = group.shard(index)
    result = evaluator(mine, ctx.steps(desc))
    probs, loss_sum = group.gather_in_order(len(index), result["probs"], result["loss"] * len(mine))
    right = accuracy(probs, evaluator.labels[index]) if len(index) else float("nan")
    return {"loss": loss_sum / max(len(index), 1), "acc": right, "probs": probs}


# 3. epochs, each seeded by (seed, epoch) so a resumed run draws what an uninterrupted one would
def run_epochs(config: TrainConfig, setup: Setup, source, state: TrainingState, ctx: RunContext):
    """Train to the last epoch (or an early stop); returns the source the final stage reads."""
    built, data, group = setup.built, setup.data, ctx.runtime.group
    evaluator = _evaluator(config, setup, source, ctx.runtime)
    precise_bn = precise_bn_wanted(config.precise_bn, built.weights.pretrained, built.plan.trainable_batchnorm)
    if precise_bn and state.start_epoch == 1:
        ctx.log("batch norm: statistics recomputed over training images before each validation (no pretraining; "
                "--precise-bn off to skip)")
    if config.epochs == 0 and not state.history:
        _keep_starting_model(config, setup, evaluator, state, ctx)
    for epoch in range(state.start_epoch, config.epochs + 1):
        if _early_stop(config, state, epoch - 1, ctx):
            break
        stage = stage_at(config, epoch)
        if epoch == stage.first_epoch and epoch > 1:
            source = enter_stage(config, setup, stage, state, ctx)
            evaluator = _evaluator(config, setup, source, ctx.runtime)
            precise_bn = precise_bn_wanted(config.precise_bn, built.weights.pretrained,
                                           built.plan.trainable_batchnorm)
        state.opt.schedule = _schedule(config, stage, epoch, state.opt)
        began = time.perf_counter()
        order = (group.shard(balanced_order(data.index("train"), data.labels, config.seed, epoch))
                 if config.balance == "sampler" else group.epoch_order(data.index("train"), config.seed, epoch))
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 101 + group.rank)
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + group.rank)  # dropout
        try:
            sums = train_one_epoch(state.opt, source, data.labels, order, generator,
                                   ctx.steps(f"epoch {epoch}/{config.epochs}"))
        except NonFiniteLoss as exc:
            kept = "best.pt and last.pt keep the last good epoch" if state.history else "no epoch finished"
            raise FacetlError(f"stopped at epoch {epoch}: {exc}; {kept}") from None
        loss_sum, correct, seen = group.sum(sums["loss_sum"], sums["correct"], sums["seen"])
        ema, validating = state.opt.ema, time.perf_counter()
        with ema.applied(built.model) if ema is not None else nullcontext():  # validation scores the average
            if precise_bn:
                recompute_batchnorm(TrainablePart(built.model, built.plan.cut), source, data.index("train"),
                                    config.batch_size, ctx.runtime.precision, config.seed)
            val = evaluate_split(evaluator, data.index("val"), "validate", ctx)
            evaluated = ({k: v.detach().clone() for k, v in built.model.state_dict().items()}
                         if ema is not None else None)
        seconds = time.perf_counter() - began
        state.validation_seconds += time.perf_counter() - validating
        row = epoch_history.epoch_row(epoch, (loss_sum / seen, correct / seen), val, sums["lr"], stage.strategy,
                                      seconds)
        _end_epoch(config, state, row, ctx, evaluated)
        if _callback_stop(state, row, ctx):
            break
    return source


def _keep_starting_model(config: TrainConfig, setup: Setup, evaluator: Evaluator, state: TrainingState,
                         ctx: RunContext) -> None:
    """--epochs 0: no training. The starting model (e.g. a pretrained classifier as head: --head fer2013:happy) is
    validated and saved as epoch 0, so evaluate, predict, serve and export use it as any run."""
    ctx.log("--epochs 0: no training; the starting weights and head are validated, saved and tested as they are")
    began = time.perf_counter()
    val = evaluate_split(evaluator, setup.data.index("val"), "validate", ctx)
    row = epoch_history.epoch_row(0, (float("nan"), float("nan")), val, 0.0, setup.built.plan.strategy,
                                  time.perf_counter() - began)
    _end_epoch(config, state, row, ctx)


def enter_stage(config: TrainConfig, setup: Setup, stage: Stage, state: TrainingState, ctx: RunContext):
    """A gradual unfreezing step: more of the backbone trains, its inputs come from a shorter frozen prefix (the
    feature cache at the new cut when it can be cached), and a new optimiser carries the old moments on."""
    built = setup.built
    built.plan = apply_strategy(built.model, stage.strategy)
    built.model.to(ctx.runtime.device, memory_format=torch.channels_last)  # thawed batch norm is new modules
    ctx.log(f"epoch {stage.first_epoch}: unfreezing, {built.plan.describe()}")
    source = choose_source(config, setup, ctx)
    if state.opt.ema is not None:
        state.opt.ema.follow(built.model)
    state.opt = _optimisation(config, setup, ctx, state.opt.ema, previous=state.opt)
    record = state.record
    record.cut, record.trainable_params = built.plan.cut, built.plan.trainable_params
    record.trained_with = ctx.runtime.used(built.plan.cut > 0)
    record.data_path_note = source.description
    return source


def _schedule(config: TrainConfig, stage: Stage, epoch: int, opt: Optimisation):
    """Sets every group's LR at a fraction of this epoch, a pure function of where the run is in its stage."""
    warmup = (config.warmup or 0.0) / stage.epochs

    def at(fraction: float) -> float:
        progress = (epoch - stage.first_epoch + fraction) / stage.epochs
        return set_learning_rates(opt.optimizer, lr_factor(config.scheduler, progress, warmup))
    return at


def _early_stop(config: TrainConfig, state: TrainingState, epoch: int, ctx: RunContext) -> bool:
    """--patience N: no better selection score for N epochs, once the last unfreezing stage has begun."""
    if not config.patience or not state.history or state.best["epoch"] is None:
        return False
    if epoch - state.best["epoch"] < config.patience or stage_at(config, epoch).first_epoch != \
            stages(config)[-1].first_epoch:
        return False
    state.record.stopped_after = epoch
    ctx.log(f"early stop after epoch {epoch}: no better {config.select} for {config.patience} epochs "
            f"(best epoch {state.best['epoch']})")
    return True


def _callback_stop(state: TrainingState, row: dict, ctx: RunContext) -> bool:
    """Tell the callbacks of the epoch; one (a search's pruner) may ask to stop. Every rank hears rank 0's answer."""
    decision = [ctx.callbacks.epoch_end(row, state.best)]
    if ctx.runtime.group.active:
        torch.distributed.broadcast_object_list(decision, src=0)
    if decision[0] is None:
        return False
    state.record.stopped_after, state.record.stopped_because = row[EPOCH], decision[0]
    ctx.log(f"stopped after epoch {row[EPOCH]}: {decision[0]}")
    return True


def _end_epoch(config: TrainConfig, state: TrainingState, row: dict, ctx: RunContext,
               evaluated: dict | None = None) -> None:
    """Record the epoch, choose the best, write checkpoints and history (rank 0), and wait for them."""
    state.history.append(row)
    state.train_seconds += row[SECONDS]
    score = -row[VAL_LOSS] if config.select == VAL_LOSS else row[VAL_ACC]
    improved = state.best["score"] is None or score > state.best["score"]
    if improved:
        state.best = {"epoch": row[EPOCH], "score": float(score)}
    state.record.best_epoch, state.record.train_seconds = state.best["epoch"], round(state.train_seconds, 2)
    ctx.log(f"epoch {row[EPOCH]:>3}/{config.epochs}  train loss {row[TRAIN_LOSS]:.4f} acc {row[TRAIN_ACC]:.4f}  "
            f"val loss {row[VAL_LOSS]:.4f} acc {row[VAL_ACC]:.4f}  lr {row[LR]:.3g}  {row[SECONDS]:.1f}s"
            + ("  *best" if improved else ""))
    if ctx.main:
        meta = {"config": config.to_dict(), "record": state.record.to_dict(), "epoch": row[EPOCH],
                "history": state.history, "best": state.best, "train_seconds": state.train_seconds}
        resume = {"optimizer": state.opt.optimizer.state_dict(),
                  "ema": state.opt.ema.state_dict() if state.opt.ema is not None else None}
        state.checkpoints.save(improved, meta, resume, evaluated)
        atomic_write_csv(ctx.folder / "history.csv", epoch_history.HEADER,
                         [epoch_history.cells(h) for h in state.history])
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
        if state.record.multi_attribute:
            state.record.thresholds = choose_thresholds(data.labels[data.index("val")], val["probs"],
                                                        state.record.threshold_rule)
            ctx.log("thresholds (each maximises " + {"f1": "F1", "balanced": "balanced accuracy"}[state.record.threshold_rule] +
                    " on the validation split): " + ", ".join(
                        f"{n} {t:.4f}" for n, t in zip(data.class_names, state.record.thresholds)))
        else:
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
    ctx.callbacks.final_split(FinalSplit(split, model, state.history))  # pictures, TensorBoard's PR curve
    metrics = write_evaluation(ctx.folder, split, state.record, state.history, config.to_dict())
    ctx.log(f"{final_split}: {metric_line(metrics)}"
            + ("  (means over the attributes)" if state.record.multi_attribute else "") + f"  train {state.train_seconds:.1f}s  report {ctx.folder / 'report.md'}")
    return RunResult(ctx.folder, metrics, state.history, state.record)


def calibrate(evaluator: Evaluator, data: PreparedData, ctx: RunContext) -> tuple[float, Calibration]:
    """--calibrate temperature: one T fitted on the validation split's logits (lowest NLL), and what it changed
    there. Every rank fits on the same gathered logits, so all agree on T."""
    index = data.index("val")
    group = ctx.runtime.group
    mine = evaluator(group.shard(index), ctx.steps("calibrate"))["logits"]
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
