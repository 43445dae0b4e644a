"""Typed run configuration: defaults, YAML in, command-line flags on top, resolved YAML out.

Every key of `TrainConfig` can come from a YAML file (`--config`) or a flag; flags win. The run folder
keeps the resolved `config.yaml`, so `facetl train --config RUN/config.yaml --out NEW` reruns it.
Validation reports every bad key at once, before any work starts.

A TrainConfig is frozen: what resolves it (the recipe, --lr auto, the run folder, absolute data paths) makes a
new one with `dataclasses.replace`, so a caller's config never changes under it.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facetl.errors import FacetlError
from facetl.preprocessing import COLOURS, LANDMARK_SOURCES, FaceAlignment

AUGMENTATIONS = ("flip", "jitter", "rotate", "shift", "scale", "none")
# (key, lowest, highest): beyond these a run would exhaust memory or disk before it could say why
# (an img_size of 100000 is a 30 GB batch of one; 100000 cache views a 98 GB file)
BOUNDS = (("epochs", 0, 100_000), ("batch_size", 1, 65_536), ("lr", 0, 10.0), ("cache_views", 0, 64),
          ("img_size", 8, 2048), ("limit", 10, 100_000_000), ("min_face", 1, 10_000), ("workers", 1, 256),
          ("seed", 0, 2**32 - 1), ("folds", 2, 100), ("patience", 1, 100_000))
STRATEGY_HELP = ("frozen | last-block | from:K (layer index or module name) | full | gradual | auto (the recipe "
                 "picks from the weights and the data's size)")


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str | None = None              # class-folder root, CSV table or list_attr_celeba.txt
    images: str | None = None            # image folder for a table
    target: str | None = None            # attribute column for a table; COL1,COL2,... or all: a multi-attribute model
    positive: str | None = None          # positive class name (two classes)
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_file: str | None = None        # reuse this split.csv (sweeps share one split)
    split_by: str | None = None          # a table column (identity) or path:REGEX; each group wholly in one split
    folds: int | None = None             # K-fold cross-validation: K runs in OUT/fold-1..K and a results table
    limit: int | None = None             # stratified subset of this many images (quick runs)
    duplicates: str = "drop"             # exact duplicate files with conflicting labels: keep|drop|error
    img_size: int | None = None          # None: the backbone's pretrained input size
    normalize: list[float] | None = None  # [mean, std] or [m1,m2,m3,s1,s2,s3]; None: backbone's
    colour: str | None = None            # rgb | grey; None: rgb, or what a facetl run given as --weights used
    augment: list[str] | None = None     # None: the recipe chooses (facetl/train/recipe.py)
    faces: str = "none"                  # none (images are face crops) | detect (find and align faces in photos)
    multi_face: str = "largest"          # a training photo with several faces: largest | skip | error
    min_face: int = 20                   # smallest face side, in pixels, that counts as a face
    landmarks: str = FaceAlignment.landmarks  # what faces are aligned with: detector | refined (preprocessing.py)
    groups: str | None = None            # a table column (identity) or path:REGEX: final metrics per group
    # model
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"            # imagenet | none | auto | fer2013 | dlib | PATH (state dict or run folder)
    head: str = "linear"                 # linear | mlp | vgg
    strategy: str = "frozen"             # frozen | last-block | from:K | full | gradual (see unfreeze)
    unfreeze: str | None = None          # gradual unfreezing: EPOCH:STRATEGY,... (None with gradual: the recipe's)
    dropout: float = 0.5
    # training: a None is chosen by the recipe from the situation and said in the log (facetl/train/recipe.py)
    lr: float | str | None = None        # the head's learning rate, or auto (the LR range test chooses)
    epochs: int | None = None
    optimizer: str | None = None         # adam | adamw | sgd (momentum 0.9, Nesterov)
    weight_decay: float | None = None    # decoupled for adamw; not applied to biases and norm layers
    lr_decay: float | None = None        # discriminative LRs: each earlier backbone block's LR times this
    warmup: float | None = None          # epochs of linear warm-up at the start of each stage (cosine, none)
    label_smoothing: float = 0.0
    patience: int | None = None          # early stopping: epochs without a better selection score
    ema: float | None = None             # exponential moving average of the weights, e.g. 0.999; evaluated, saved
    batch_size: int | None = None        # None: the recipe's for the device (32; 128 on a GPU)
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | mps
    precision: str = "auto"              # auto | fp32 | bf16 | fp16
    select: str = "val_loss"             # val_loss | val_acc
    balance: str = "none"                # class imbalance: none | loss (class-weighted) | sampler (balanced batches)
    threshold: str = "0.5"               # two classes: a probability, or f1 | balanced (chosen on validation)
    scheduler: str | None = None         # none | cosine | onecycle, per unfreezing stage
    precise_bn: str = "auto"             # recompute batch-norm statistics before each validation: auto | on | off
    calibrate: str = "none"              # none | temperature (one T fitted on validation after training)
    # speed
    cache: bool = True                   # decoded-image and frozen-feature caches
    cache_dir: str | None = None         # default: ~/.cache/facetl or $FACETL_CACHE
    cache_views: int = 0                 # augmented views stored per image when augmenting with jitter/rotate
    workers: int | None = None           # decode processes; None: one per core
    compile: bool = False                # torch.compile the part that trains (opt-in: compiling takes a while)
    out: str | None = None               # run folder

    def __post_init__(self):
        """A config checks itself when it is built (from YAML, flags, or a `dataclasses.replace` that resolves it):
        one FacetlError listing every invalid value. `data` may still be missing (a sweep's base, a partial file);
        `check` says so where a run starts."""
        problems = value_problems(self)
        if problems:
            raise FacetlError("invalid configuration: " + "; ".join(problems))

    def check(self) -> None:
        """Ready to run: every value was checked when built; a run also needs its data."""
        if self.data is None:
            raise FacetlError("invalid configuration: data: required (a class-folder root or an attribute table)")

    def face_alignment(self) -> FaceAlignment | None:
        """What --faces detect means for this run: the record that store, checkpoint and predict share."""
        if self.faces != "detect":
            return None
        return FaceAlignment(min_face=self.min_face, multi_face=self.multi_face, landmarks=self.landmarks)

    @property
    def multi_attribute(self) -> bool:
        """--target COL1,COL2 or --target all: one model, one sigmoid output per attribute."""
        return self.target is not None and ("," in self.target or self.target.strip() == "all")

    @property
    def targets(self) -> list[str] | None:
        """The attribute columns of a multi-attribute run (None for all: every binary column of the table)."""
        if not self.multi_attribute or self.target.strip() == "all":
            return None
        return [t.strip() for t in self.target.split(",") if t.strip()]

    @property
    def augmentations(self) -> list[str]:
        return [a for a in self.augment or [] if a != "none"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# One line of help per key, with its unit or choices: the command line's --help (the default is added from
# TrainConfig). A new key is a field above and a line here; the flag follows (a test checks every option has help).
HELP = {
    "balance": "class imbalance: none | loss (weighted) | sampler (balanced batches)",
    "threshold": "two classes: the probability that decides, or f1 | balanced (the best on validation)",
    "data": "class folders, a CSV table or list_attr_celeba.txt",
    "images": "image folder of a table (None: the table's folder)",
    "target": "a table's attribute column (Smiling, Male, ...)",
    "positive": "positive class of two (None: 1, or the second sorted)",
    "split": "train, val and test fractions",
    "split_file": "reuse an existing split.csv",
    "split_by": "keep each group in one split: a table column or path:REGEX",
    "folds": "K-fold cross-validation (2 to 100): OUT/fold-1..K, OUT/results.md",
    "limit": "a stratified random subset of this many images",
    "duplicates": "identical files labelled differently: keep | drop | error",
    "img_size": "resize to N x N pixels (None: the weights' size)",
    "normalize": "MEAN STD, or 3 means and 3 stds (None: the weights')",
    "colour": "rgb | grey (None: rgb, or the --weights run's)",
    "augment": "flip, jitter, rotate[:DEG], shift[:PX], scale[:PCT] or none",
    "faces": "none: images are face crops | detect: find and align faces (MTCNN)",
    "multi_face": "a photo with several faces: largest | skip | error",
    "min_face": "smallest face side that counts, in pixels",
    "landmarks": "align faces on detector (MTCNN's) or refined landmarks (found again: more exact, a few ms slower)",
    "groups": "metrics per group too: a table column or path:REGEX",
    "backbone": "vgg16, vgg19, mobilenet_v2, ... or a timm name (facetl backbones)",
    "weights": "imagenet | none | auto | fer2013 | dlib (facetl backbones) | PATH (state dict or run folder)",
    "head": "linear | mlp (4096-1024) | vgg (4096-4096) | fer2013[:EXPRESSION]",
    "strategy": "frozen | last-block | from:K | full | gradual | auto (the recipe's pick)",
    "dropout": "dropout in the mlp and vgg heads, 0 to <1",
    "lr": "the head's peak LR, or auto (the LR range test's)",
    "optimizer": "adam | adamw | sgd (momentum 0.9, Nesterov)",
    "weight_decay": "weight decay (decoupled with adamw; not on biases)",
    "lr_decay": "each earlier block's LR: the next one's times this",
    "warmup": "epochs of linear LR warm-up in each stage",
    "unfreeze": "--strategy gradual's EPOCH:STRATEGY,... e.g. 1:frozen,3:last-block,6:full",
    "label_smoothing": "move targets this far towards uniform, 0 to 0.5",
    "patience": "stop after N epochs without a better score",
    "ema": "evaluate an average of the weights with this decay, e.g. 0.999",
    "epochs": "training epochs (0: test the starting model as it is)",
    "batch_size": "images per step and process (recipe: 32 CPU, 128 GPU)",
    "seed": "seed of the split, initial weights and draws",
    "device": "auto | cpu | cuda | mps",
    "precision": "auto | fp32 | bf16 | fp16",
    "select": "best epoch by val_loss or val_acc",
    "scheduler": "LR schedule in each stage: none | cosine | onecycle",
    "precise_bn": "recompute batch-norm statistics before validating: auto | on | off",
    "calibrate": "none | temperature (one T fitted on validation logits)",
    "cache": "use the decoded-image and frozen-feature caches",
    "cache_views": "augmented views cached per image (jitter, rotate)",
    "cache_dir": "cache folder (None: $FACETL_CACHE or ~/.cache/facetl)",
    "workers": "processes decoding images (None: one per core)",
    "compile": "torch.compile what trains (a minute to start; long GPU runs)",
    "out": "run folder (None: runs/BACKBONE-STRATEGY-TIME)",
}

# What a tracker needs that is not the run's recipe: the command's tracking settings (facetl/track/settings.py).
# A run's config.yaml from before they left TrainConfig holds them: build_config sets them aside.
TRACKING_KEYS = ("track", "track_dir", "tracking_uri", "track_group")

CHOICES = {
    "duplicates": ("keep", "drop", "error"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "select": ("val_loss", "val_acc"),
    "scheduler": (None, "none", "cosine", "onecycle"),
    "optimizer": (None, "adam", "adamw", "sgd"),
    "precise_bn": ("auto", "on", "off"),
    "faces": ("none", "detect"),
    "multi_face": ("largest", "skip", "error"),
    "landmarks": LANDMARK_SOURCES,
    "balance": ("none", "loss", "sampler"),
    "calibrate": ("none", "temperature"),
}
# (key, lowest, highest) of the training numbers the recipe may leave unset
TRAINING_RANGES = (("weight_decay", 0, 10), ("lr_decay", 0, 1), ("warmup", 0, 1000), ("label_smoothing", 0, 0.5))


def value_problems(config: TrainConfig) -> list[str]:
    """Every invalid value of a config, each said once."""
    return (split_problems(config.split) + choice_problems(config) + model_problems(config)
            + range_problems(config) + combination_problems(config))


def split_problems(split: list[float]) -> list[str]:
    if len(split) != 3 or any(p < 0 for p in split) or abs(sum(split) - 1) > 1e-6:
        return [f"split: need three non-negative fractions summing to 1, got {split}"]
    if split[0] == 0 or split[1] == 0:
        return ["split: train and validation fractions must be above 0"]
    return []


def choice_problems(config: TrainConfig) -> list[str]:
    """Keys that take one of a few words, the threshold, the colour and the augmentations."""
    problems = [f"{key}: {getattr(config, key)!r} is not one of {', '.join(a for a in allowed if a)}"
                for key, allowed in CHOICES.items() if getattr(config, key) not in allowed]
    if config.threshold not in THRESHOLD_RULES and not _is_probability(config.threshold):
        problems.append(f"threshold: {config.threshold!r} is not a probability between 0 and 1, f1 or balanced")
    if config.colour is not None and config.colour not in COLOURS:
        problems.append(f"colour: {config.colour!r} is not one of {', '.join(COLOURS)}")
    for aug in config.augment or []:
        name, _, arg = aug.partition(":")
        if name not in AUGMENTATIONS or (arg and (name not in ("rotate", "shift", "scale") or not is_number(arg)
                                                 or not 0 <= float(arg) <= 90)):
            problems.append(f"augment: unknown augmentation {aug!r} (flip, jitter, rotate[:DEGREES], "
                            "shift[:PIXELS], scale[:PERCENT] with an amount from 0 to 90, none)")
    return problems


def model_problems(config: TrainConfig) -> list[str]:
    """The head, the strategy and its unfreezing stages, the LR's word and dropout."""
    problems = []
    if config.head not in ("linear", "mlp", "vgg", "fer2013") and not config.head.startswith("fer2013:"):
        problems.append(f"head: {config.head!r} is not one of linear, mlp, vgg, fer2013[:EXPRESSION]")
    if not (config.strategy in ("frozen", "last-block", "full", "gradual", "auto")
            or config.strategy.startswith("from:")):
        problems.append(f"strategy: {config.strategy!r} is not one of {STRATEGY_HELP}")
    if config.unfreeze is not None:
        problems += unfreeze_problems(config.unfreeze, config.epochs)
        if config.strategy != "gradual":
            problems.append(f"unfreeze: applies with --strategy gradual, not {config.strategy}")
    if isinstance(config.lr, str) and config.lr != "auto":
        problems.append(f"lr: {config.lr!r} is not a number or auto")
    if not 0 <= config.dropout < 1:
        problems.append(f"dropout: {config.dropout} must be in [0, 1)")
    return problems


def range_problems(config: TrainConfig) -> list[str]:
    """Numbers within their bounds (BOUNDS, TRAINING_RANGES), finite, and normalize's shape."""
    problems = []
    for key, low, high in TRAINING_RANGES:
        value = getattr(config, key)
        if value is not None and (not math.isfinite(value) or not low <= value <= high
                                  or (key == "lr_decay" and value == 0)):
            problems.append(f"{key}: {value} is out of range ({'above 0' if key == 'lr_decay' else f'from {low}'}"
                            f" to {high})")
    if config.ema is not None and not 0 < config.ema < 1:
        problems.append(f"ema: {config.ema} must be a decay between 0 and 1 (e.g. 0.999)")
    if config.normalize is not None:
        problems += normalize_problems(config.normalize)
    for key, low, high in BOUNDS:
        value = getattr(config, key)
        if value is None or isinstance(value, str):
            continue
        if not math.isfinite(value) or not low <= value <= high or (key == "lr" and value == 0):
            problems.append(f"{key}: {value} is out of range ({'above 0' if key == 'lr' else f'from {low}'} "
                            f"to {high})")
    if not all(math.isfinite(v) for v in config.split + (config.normalize or [])):
        problems.append("split and normalize values must be finite numbers")
    return problems


def combination_problems(config: TrainConfig) -> list[str]:
    """Groups, multi-attribute runs and folds: what cannot go together."""
    problems = []
    if config.split_by is not None:
        problems += group_spec_problems(config.split_by)
    if config.groups is not None:
        problems += group_spec_problems(config.groups, "groups")
    if config.multi_attribute:
        problems += multi_attribute_problems(config)
    if config.folds is not None and config.split_file:
        problems.append("folds: each fold makes its own split; it cannot be combined with split_file")
    return problems


def multi_attribute_problems(config: TrainConfig) -> list[str]:
    """What a multi-attribute run (--target COL1,COL2 or all) cannot do yet, each said once."""
    problems = []
    targets = config.targets
    if targets is not None and len(targets) < 2:
        problems.append(f"target: {config.target!r} lists one column; name two or more (Smiling,Male) or one without "
                        "a comma")
    if targets is not None and len(set(targets)) < len(targets):
        problems.append(f"target: {config.target!r} names a column twice")
    for key, value, why in (("balance", "sampler", "balanced batches are per class, and an image has K labels; use "
                                                   "--balance loss (a pos_weight per attribute)"),
                            ("calibrate", "temperature", "one temperature per attribute is not implemented"),
                            ("positive", None, "each attribute's positive class is its value 1"),
                            ("groups", None, "metrics per group are for single-target runs"),
                            ("folds", None, "cross-validation is for single-target runs; use a split")):
        given = getattr(config, key)
        if given is not None and (value is None or given == value):
            problems.append(f"{key}: {given} does not apply to a multi-attribute run (--target {config.target}): "
                            f"{why}")
    return problems


def normalize_problems(values: list[float]) -> list[str]:
    """MEAN,STD or three means then three stds: finite means, stds finite and above 0 (images are divided by them)."""
    if len(values) not in (2, 6):
        return ["normalize: give MEAN,STD or three means and three stds"]
    half = len(values) // 2
    means, stds = values[:half], values[half:]
    problems = []
    if not all(math.isfinite(m) for m in means):
        problems.append(f"normalize: the means {means} must be finite numbers")
    if not all(math.isfinite(s) and s > 0 for s in stds):
        problems.append(f"normalize: the stds {stds} must be finite numbers above 0 (each image is divided by them)")
    return problems


def group_spec_problems(split_by: str, key: str = "split_by") -> list[str]:
    """split_by and groups name a group the same way: a table column, or path:REGEX with a capture group."""
    if not split_by:
        return [f"{key}: name a table column (e.g. identity) or path:REGEX"]
    if not split_by.startswith("path:"):
        return []
    try:
        pattern = re.compile(split_by[len("path:"):])
    except re.error as exc:
        return [f"{key}: {split_by!r} is not a regular expression ({exc})"]
    return [] if pattern.groups else [f"{key}: {split_by!r} needs a capture group, e.g. path:^([^/]+)/"]


def parse_unfreeze(text: str) -> list[tuple[int, str]]:
    """'1:frozen,4:last-block,7:full' -> [(1, 'frozen'), (4, 'last-block'), (7, 'full')]; ValueError says why."""
    stages = []
    for item in text.split(","):
        epoch, sep, strategy = item.strip().partition(":")
        if not sep or not epoch.strip().isdigit() or not strategy:
            raise ValueError(f"{item.strip()!r} is not EPOCH:STRATEGY (e.g. 1:frozen,4:last-block,7:full)")
        stages.append((int(epoch), strategy.strip()))
    if stages[0][0] != 1:
        raise ValueError("the first stage must start at epoch 1")
    if any(b[0] <= a[0] for a, b in zip(stages, stages[1:])):
        raise ValueError("stage epochs must increase")
    for _, strategy in stages:
        if not (strategy in ("frozen", "last-block", "full") or strategy.startswith("from:")):
            raise ValueError(f"{strategy!r} is not frozen, last-block, from:K or full")
    return stages


def unfreeze_problems(text: str, epochs: int | None) -> list[str]:
    try:
        stages = parse_unfreeze(text)
    except ValueError as exc:
        return [f"unfreeze: {exc}"]
    if epochs is not None and stages[-1][0] > epochs:
        return [f"unfreeze: stage at epoch {stages[-1][0]} comes after the last epoch ({epochs})"]
    return []


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


THRESHOLD_RULES = ("f1", "balanced")


def _is_probability(text: str) -> bool:
    try:
        return 0 < float(text) < 1
    except ValueError:
        return False


# the training keys the recipe fills when they are left out (facetl/train/recipe.py)
RECIPE_KEYS = ("optimizer", "weight_decay", "lr", "epochs", "augment", "lr_decay", "scheduler", "unfreeze",
               "batch_size")
# The word `none` given for a key whose unset value (None) means "the recipe or the backbone decides": what it
# means when a user says it. A YAML null leaves the key unset; the word is an explicit value and wins.
NONE_WORD = {"augment": [], "weight_decay": 0.0, "lr_decay": 1.0, "warmup": 0.0, "normalize": [0.0, 1.0]}
# keys whose unset value already means none, off or no override: the word and null are the same thing (lr and
# epochs are left: `none` is no learning rate or epoch count, and leaving them out asks the recipe)
NONE_IS_UNSET = ("limit", "folds", "patience", "ema", "img_size", "workers")


def coerce(key: str, value):
    """Convert a YAML or command-line value to the type of `key`; raise ValueError with a reason."""
    if key == "lr" and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    hint = _HINTS[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not list else hint
    if isinstance(value, str) and value.strip().lower() in ("null", "none") and optional and base is not str:
        if key in NONE_WORD:
            return list(NONE_WORD[key]) if isinstance(NONE_WORD[key], list) else NONE_WORD[key]
        if key not in NONE_IS_UNSET:
            raise ValueError(f"{value.strip()!r} is not a value here; leave it out for the default")
        return None
    if value is None:
        if optional:
            return None
        raise ValueError("may not be empty")
    origin = typing.get_origin(base)
    if origin is list:
        (item,) = typing.get_args(base)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return [_scalar(item, v) for v in value]
    return _scalar(base, value)


def _scalar(kind, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected text, got {value!r}")
        return str(value).strip()
    raise TypeError(kind)


def build_config(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """Apply `values` on top of `base`, reporting unknown keys and wrong types all at once."""
    changes, problems = {}, []
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in TRACKING_KEYS:  # an old run's config.yaml: the command's tracking settings read them
            continue
        if name not in FIELDS:
            problems.append(f"{key}: unknown key")
            continue
        try:
            changes[name] = coerce(name, value)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise FacetlError("invalid configuration: " + "; ".join(problems))
    return dataclasses.replace(base or TrainConfig(), **changes)


# the keys that name data on disk: a run's config.yaml holds them absolute (train/fit.py record_data_paths)
DATA_PATH_KEYS = ("data", "images", "split_file")


def with_absolute_paths(config: TrainConfig, keys: tuple[str, ...] = DATA_PATH_KEYS) -> TrainConfig:
    """The config with its data paths absolute, so a run reopened from another directory still finds them."""
    return dataclasses.replace(config, **{key: str(Path(getattr(config, key)).expanduser().resolve())
                                          for key in keys if getattr(config, key)})


# what runs trained with before the recipe keys existed: a run's config.yaml from then lacks them
BEFORE_RECIPE = {"optimizer": "adam", "weight_decay": 0.0, "lr_decay": 1.0, "warmup": 0.0, "batch_size": 32}


def with_old_recipe(values: dict) -> dict:
    """A resolved config.yaml written before the recipe (it has scheduler and precise_bn, written by every run,
    but no optimizer) trained with Adam, no weight decay, one LR: `--config RUN/config.yaml` reruns it so."""
    if {"scheduler", "precise_bn", "lr", "epochs"} <= set(values) and "optimizer" not in values:
        return {**BEFORE_RECIPE, **values}
    return values


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FacetlError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as exc:
        raise FacetlError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise FacetlError(f"config file {path} must be a mapping of key: value")
    return values


def dump_yaml(config: TrainConfig, tracking: dict | None = None) -> str:
    """The config as YAML; `tracking` (settings a command tracks with, facetl/track/settings.py) after its keys."""
    return yaml.safe_dump({**config.to_dict(), **(tracking or {})}, sort_keys=False)
