"""The training recipe: defaults chosen from the situation and said aloud, schedules, discriminative LRs,
gradual unfreezing (resumed across a step as if never interrupted), early stopping, EMA, the LR range test."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import facetl.train.fit as fit_module
from commandline import in_process, one_line_error
from facetl.cli import build_parser, main
from facetl.flags import config_from_args
from facetl.config import RECIPE_KEYS, TrainConfig, build_config, load_yaml, with_old_recipe
from facetl.errors import FacetlError
from facetl.models import build_model
from facetl.record import StartingWeights
from facetl.train.fit import fit
from facetl.train.lrfind import steepest_descent
from facetl.train.optim import make_optimizer, parameter_groups
from facetl.train.recipe import complete_recipe
from facetl.train.schedule import lr_factor, stages

REPO = Path(__file__).resolve().parents[1]
SMILES = REPO.parent / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"
needs_smiles = pytest.mark.skipif(not SMILES.is_dir(), reason=f"SMILEsmileD not found at {SMILES}")


def tiny(out: Path, **values) -> TrainConfig:
    base = dict(data=str(SMILES), weights="none", img_size=32, limit=240, batch_size=16, epochs=2, out=str(out),
                precise_bn="off")
    return build_config({**base, **values})


def history(folder: Path) -> list[dict]:
    with open(folder / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_recipe_fits_the_situation_and_leaves_given_keys_alone():
    scratch = TrainConfig(data="x", weights="none", strategy="full")
    scratch, lines = complete_recipe(scratch, StartingWeights("none"), 10_000)
    assert (scratch.lr, scratch.optimizer, scratch.scheduler, scratch.epochs) == (2e-3, "adamw", "onecycle", 20)
    assert "rotate:10" in scratch.augment and "no pretraining" in lines[0]
    frozen = TrainConfig(data="x", weights="imagenet", strategy="frozen")
    frozen, _ = complete_recipe(frozen, StartingWeights("imagenet"), 10_000)
    assert (frozen.lr, frozen.augment, frozen.lr_decay, frozen.epochs) == (3e-3, ["flip"], 1.0, 30)  # flip: cached
    jittered = TrainConfig(data="x", weights="imagenet", strategy="frozen", augment=["flip", "jitter"])
    jittered, _ = complete_recipe(jittered, StartingWeights("imagenet"), 10_000)
    assert jittered.epochs == 10  # every epoch recomputes the frozen part
    tuned = TrainConfig(data="x", weights="imagenet", strategy="gradual", lr=3e-4, epochs=12)
    tuned, _ = complete_recipe(tuned, StartingWeights("imagenet"), 10_000)
    assert (tuned.lr, tuned.epochs, tuned.lr_decay) == (3e-4, 12, 0.5)
    assert [(s.first_epoch, s.strategy) for s in stages(tuned)] == [(1, "frozen"), (2, "full")]  # fastai's fine_tune
    for study in sorted((REPO / "configs").glob("study*.yaml")):  # the studies keep their exact recipes
        config = build_config({"data": "x", **load_yaml(study)})
        config, lines = complete_recipe(config, StartingWeights("imagenet"), 24_000)
        assert len(lines) == 1 and lines[0].startswith("given, so the recipe keeps them: optimizer adam"), study.name
        assert (config.optimizer, config.scheduler, config.weight_decay) == ("adam", "none", 0)


@pytest.mark.parametrize("flag, key, value", [("--augment", "augment", []), ("--weight-decay", "weight_decay", 0.0),
                                              ("--lr-decay", "lr_decay", 1.0), ("--normalize", "normalize", [0.0, 1.0])])
def test_the_word_none_is_a_given_value_that_the_recipe_keeps(flag, key, value):
    """`--augment none` once read as 'not given', so the recipe added flip, jitter and rotate: a frozen run then
    recomputed its backbone every batch. The word is a value, it wins, and the log says it was given."""
    config = config_from_args(build_parser().parse_args(["train", "--data", "x", flag, "none"]))
    assert getattr(config, key) == value
    config, lines = complete_recipe(config, StartingWeights("imagenet"), 1_000)
    assert getattr(config, key) == value
    if key in RECIPE_KEYS:
        assert f"{key} {'none' if value == [] else f'{value:g}'}" in lines[0] and lines[0].startswith("given")
    frozen = config_from_args(build_parser().parse_args(["train", "--data", "x", "--augment", "none"]))
    frozen, _ = complete_recipe(frozen, StartingWeights("imagenet"), 1_000)
    assert frozen.augmentations == [] and frozen.epochs == 30  # features cached: no jitter to recompute them


@pytest.mark.parametrize("flag", ["--lr", "--epochs"])
def test_none_for_a_number_the_recipe_chooses_is_refused_not_read_as_unset(flag, capsys):
    result = in_process(capsys, "train", "--data", "x", flag, "none")
    one_line_error(result, flag[2:], "'none' is not a value")


def test_schedules_rise_and_fall_within_each_stage():
    cycle = [lr_factor("onecycle", t / 100) for t in range(101)]
    assert cycle[0] == pytest.approx(1 / 25) and max(cycle) == pytest.approx(1.0, abs=1e-3)
    assert cycle.index(max(cycle)) == 25 and cycle[-1] < 1e-4
    assert lr_factor("cosine", 0.1, warmup=0.2) == pytest.approx(0.5)  # half-way up the warm-up
    assert lr_factor("cosine", 0.6, warmup=0.2) == pytest.approx(0.5)  # half-way down the cosine
    assert lr_factor("none", 0.9) == 1.0


def test_discriminative_learning_rates_fall_block_by_block_towards_the_input():
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights="none", strategy="full")
    model = build_model(config, 2, log=lambda _: None).model
    optimizer = make_optimizer("adamw", parameter_groups(model, 1e-3, 0.5, 0.01))
    peak = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            peak[id(p)] = (group["base_lr"], group["weight_decay"])
    head = model.head.fc if hasattr(model.head, "fc") else next(m for m in model.head.modules()
                                                                 if isinstance(m, torch.nn.Linear))
    first_conv = model.backbone.features[0][0].weight
    last_block = model.backbone.features[model.backbone.block_starts[-1]]
    last_weight = next(p for p in last_block.parameters() if p.ndim > 1)
    assert peak[id(head.weight)] == (1e-3, 0.01)
    assert peak[id(head.bias)][1] == 0.0                     # no weight decay on biases
    assert peak[id(last_weight)][0] == pytest.approx(5e-4)   # last block: one step of decay
    blocks = len(model.backbone.block_starts)
    assert peak[id(first_conv)][0] == pytest.approx(1e-3 * 0.5 ** blocks)


@needs_smiles
def test_gradual_unfreezing_resumed_across_a_step_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    values = dict(strategy="gradual", unfreeze="1:frozen,2:full", epochs=3, ema=0.9, augment="flip")
    whole = fit(tiny(tmp_path / "whole", **values), progress=False, quiet=True)
    rows = history(whole.folder)
    assert [r["strategy"] for r in rows] == ["frozen", "full", "full"]
    assert all(float(r["lr"]) > 0 for r in rows)
    log = (whole.folder / "train.log").read_text()
    assert "epoch 2: unfreezing, strategy full" in log

    real_end = fit_module._end_epoch

    def stop_after_first(config, state, row, ctx, evaluated=None):
        real_end(config, state, row, ctx, evaluated)
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # killed after epoch 1 was saved, before the unfreezing step
    monkeypatch.setattr(fit_module, "_end_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path / "killed", **values), progress=False, quiet=True)
    monkeypatch.setattr(fit_module, "_end_epoch", real_end)
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    resumed = history(tmp_path / "killed")
    assert [r["strategy"] for r in resumed] == ["frozen", "full", "full"]
    for a, b in zip(rows, resumed):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-5)
    best_whole = torch.load(whole.folder / "best.pt", weights_only=True)["model"]
    best_resumed = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)["model"]
    for key, value in best_whole.items():
        assert torch.allclose(value.float(), best_resumed[key].float(), atol=1e-6), key
    # the run reopens for evaluation whichever stage its best epoch came from
    assert main(["evaluate", str(whole.folder)]) == 0


@needs_smiles
def test_early_stopping_ends_the_run_and_says_why(tmp_path):
    # lr 5 makes every epoch after the first worse; patience 1 stops after the second
    result = fit(tiny(tmp_path / "run", strategy="full", epochs=6, lr=5.0, optimizer="sgd", patience=1,
                      select="val_acc", scheduler="none", weight_decay=0, augment="none"),
                 progress=False, quiet=True)
    rows = history(result.folder)
    assert len(rows) < 6 and result.record.stopped_after == len(rows)
    assert "early stop after epoch" in (result.folder / "train.log").read_text()
    assert "stopped early" in (result.folder / "report.md").read_text()


@needs_smiles
def test_lr_find_draws_the_range_test_and_lr_auto_trains_with_its_suggestion(tmp_path, capsys):
    out = tmp_path / "find"
    assert main(["lr-find", "--data", str(SMILES), "--weights", "none", "--img-size", "32", "--limit", "240",
                 "--strategy", "gradual", "--unfreeze", "1:frozen,2:full", "--epochs", "2", "--batch-size", "16",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "suggested lr" in printed and (out / "lr_find.png").stat().st_size > 10_000
    assert "stage full: suggested lr" in printed and (out / "lr_find-full.png").is_file()  # the unfrozen part too
    with open(out / "lr_find.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == sorted(lrs) and lrs[0] < 1e-6 and len(lrs) > 20
    run = fit(tiny(tmp_path / "auto", strategy="full", lr="auto", epochs=1), progress=False, quiet=True)
    chosen = load_yaml(run.folder / "config.yaml")["lr"]
    assert isinstance(chosen, float) and 1e-7 < chosen < 10
    assert "--lr auto" in (run.folder / "report.md").read_text()


def test_steepest_descent_finds_where_the_loss_falls_fastest():
    lrs = [10 ** (-7 + i * 0.08) for i in range(100)]
    # flat, then falling fastest around 1e-3, then diverging
    losses = [1 - 0.5 * (1 + math.tanh((math.log10(lr) + 3) * 3)) / 2 + (max(0, math.log10(lr) + 1) ** 2)
              for lr in lrs]
    at, rule = steepest_descent(lrs, losses)
    assert 10 ** -3.3 < lrs[at] < 10 ** -2.7 and rule == "steepest descent"
    flat = [0.6 + (0.001 * math.sin(i) if lr < 1e-2 else (math.log10(lr) + 2.5)) for i, lr in enumerate(lrs)]
    at, rule = steepest_descent(lrs, flat)  # nothing learnt: a tenth of where the loss starts to climb
    assert 10 ** -3.6 < lrs[at] < 10 ** -2.6 and rule == "a tenth of where the loss climbs"


@pytest.mark.parametrize("values, words", [
    ({"unfreeze": "1:frozen,3:full"}, ["unfreeze", "--strategy gradual"]),
    ({"strategy": "gradual", "unfreeze": "2:frozen"}, ["unfreeze", "epoch 1"]),
    ({"strategy": "gradual", "unfreeze": "1:frozen,1:full"}, ["unfreeze", "increase"]),
    ({"strategy": "gradual", "unfreeze": "1:frozen,x:full"}, ["unfreeze", "EPOCH:STRATEGY"]),
    ({"strategy": "gradual", "unfreeze": "1:frozen,3:sideways"}, ["unfreeze", "sideways"]),
    ({"strategy": "gradual", "unfreeze": "1:frozen,30:full", "epochs": 10}, ["unfreeze", "after the last epoch"]),
    ({"ema": 1.5}, ["ema", "between 0 and 1"]),
    ({"lr_decay": 0}, ["lr_decay", "out of range"]),
    ({"label_smoothing": 0.9}, ["label_smoothing", "out of range"]),
    ({"optimizer": "rmsprop"}, ["optimizer", "adamw"]),
    ({"scheduler": "step"}, ["scheduler", "onecycle"]),
    ({"patience": 0}, ["patience", "out of range"]),
])
def test_bad_recipe_values_are_one_clear_line(values, words):
    with pytest.raises(FacetlError) as error:
        build_config({"data": "x", **values}).check()
    assert all(w in str(error.value) for w in words), str(error.value)


@needs_smiles
def test_stages_that_freeze_again_are_refused_before_training(tmp_path):
    with pytest.raises(FacetlError, match="may only unfreeze more"):
        fit(tiny(tmp_path / "run", strategy="gradual", unfreeze="1:full,2:frozen"), progress=False, quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_config_yaml_from_before_the_recipe_reruns_with_the_optimiser_it_trained_with():
    old = {"data": "x", "lr": 1e-4, "epochs": 10, "scheduler": "none", "precise_bn": "auto", "augment": []}
    config = build_config(with_old_recipe(old))
    config, lines = complete_recipe(config, StartingWeights("imagenet"), 1000)
    assert not any(line.startswith("recipe") for line in lines)
    assert (config.optimizer, config.weight_decay, config.lr_decay) == ("adam", 0.0, 1.0)
    handwritten = build_config(with_old_recipe({"data": "x", "lr": 1e-3}))  # not a run's file: the recipe fills
    assert handwritten.optimizer is None
