"""One resolved config: a TrainConfig is never edited in place. The recipe, --lr auto, the run folder and the
absolute data paths make new configs (the caller's stays as given), the data code reads a typed DataSpec, and
the preprocessing a run will use is known without building its network."""
from __future__ import annotations

import dataclasses

import pytest

import facetl.models.classifier as classifier_module
from commandline import in_process
from facetl.config import TrainConfig, build_config, load_yaml
from facetl.data.prepare import prepare_data, read_samples
from facetl.data.spec import DataSpec, data_spec
from facetl.experiments.folds import make_fold_splits
from facetl.models import build_model
from facetl.models.classifier import resolve_preprocessing
from facetl.models.factory import create_backbone, pretrained_input
from facetl.record import StartingWeights
from facetl.train.fit import fit
from facetl.train.recipe import complete_recipe
from conftest import write_image

TINY = dict(weights="none", img_size=32, strategy="full", epochs=1, batch_size=8, precise_bn="off")


def refuse_to_build(*args, **kwargs):
    raise AssertionError("a network was built only to learn its preprocessing")


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """A run with --lr auto and relative paths, and the config object its caller passed to fit."""
    root = tmp_path_factory.mktemp("resolved")
    for c, name in enumerate(("no_smile", "smile")):
        for i in range(10):
            write_image(root / "tiny" / name / f"{i:02d}.jpg", 16, seed=100 * c + i)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        # a frozen backbone on cached features: the range test trains a linear head, in seconds
        given = build_config({"data": "tiny", "out": "run", "lr": "auto", "cache_dir": str(root / "cache"),
                              **TINY, "strategy": "frozen", "augment": "none"})
        before = given.to_dict()
        result = fit(given, progress=False, quiet=True)
    return root, given, before, result


def test_a_config_cannot_be_edited_in_place():
    config = TrainConfig(data="faces")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1e-3
    changed = build_config({"lr": "1e-3", "epochs": 3}, config)
    assert (changed.lr, changed.epochs) == (1e-3, 3) and (config.lr, config.epochs) == (None, None)


def test_the_recipe_returns_a_new_config_and_keeps_its_log_lines():
    given = TrainConfig(data="faces", weights="imagenet", strategy="gradual", epochs=6)
    resolved, lines = complete_recipe(given, StartingWeights("imagenet"), 1_000)
    assert (given.lr, given.optimizer, given.unfreeze, given.augment) == (None, None, None, None)
    assert (resolved.lr, resolved.optimizer, resolved.unfreeze) == (1e-3, "adamw", "1:frozen,2:full")
    assert lines[0] == "given, so the recipe keeps them: epochs 6"
    assert lines[1].startswith("recipe for ImageNet") and "unfreeze 1:frozen,2:full (the new head" in lines[1]


def test_fit_leaves_the_callers_config_as_given_and_returns_the_resolved_one(auto_run):
    root, given, before, result = auto_run
    assert given.to_dict() == before  # lr still auto, data and out still relative, the recipe's keys still unset
    resolved = result.config
    assert isinstance(resolved.lr, float) and resolved.lr != "auto"
    assert resolved.data == str(root / "tiny") and resolved.out == "run"
    assert (resolved.optimizer, resolved.scheduler) == ("adamw", "onecycle")
    assert load_yaml(root / "run" / "config.yaml") == resolved.to_dict()  # config.yaml is the resolved config
    assert "recipe for no pretraining" in (root / "run" / "train.log").read_text()
    assert "--lr auto: the LR range test" in (root / "run" / "report.md").read_text()


def test_the_saved_config_reruns_the_run_exactly(auto_run, capsys):
    root, _, _, result = auto_run
    again = root / "again"
    assert in_process(capsys, "train", "--config", str(root / "run" / "config.yaml"), "--out",
                      str(again)).returncode == 0
    first, second = load_yaml(root / "run" / "config.yaml"), load_yaml(again / "config.yaml")
    assert {**first, "out": None} == {**second, "out": None}
    log = (again / "train.log").read_text()
    assert "given, so the recipe keeps them: optimizer adamw" in log and "recipe for" not in log


def test_a_runs_preprocessing_is_read_from_its_record_without_building_a_model(auto_run, monkeypatch):
    root, _, _, result = auto_run
    monkeypatch.setattr(classifier_module, "create_backbone", refuse_to_build)
    starting = TrainConfig(data=str(root / "tiny"), weights=str(root / "run"))
    assert resolve_preprocessing(starting) == result.record.preprocessing  # 32 pixels, as that run trained
    assert resolve_preprocessing(dataclasses.replace(starting, img_size=48)).size == 48


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18", "vit_tiny_patch16_224"])
def test_preprocessing_without_a_model_is_what_the_built_model_uses(backbone):
    config = TrainConfig(data="faces", backbone=backbone, weights="none")
    built = create_backbone(backbone, "none")
    assert pretrained_input(backbone) == (built.input_size, built.mean, built.std)
    assert resolve_preprocessing(config) == build_model(config, 2, log=lambda m: None).preprocessing


def test_folds_learn_the_preprocessing_without_building_a_model(tiny_folder_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(classifier_module, "create_backbone", refuse_to_build)
    config = build_config({"data": str(tiny_folder_dataset), "folds": 2, "cache_dir": str(tmp_path / "c"), **TINY})
    folds = make_fold_splits(config, log=lambda m: None, progress=False)
    assert len(folds.assignments) == 2 and len(folds.samples) == 20


def test_the_data_code_takes_a_typed_spec(tiny_folder_dataset, tmp_path):
    config = build_config({"data": str(tiny_folder_dataset), "limit": 16, "seed": 3, "split": "0.5,0.25,0.25",
                           "cache_dir": str(tmp_path / "c"), **TINY})
    spec = data_spec(config)
    assert all(getattr(spec, f.name) == (tuple(config.split) if f.name == "split" else getattr(config, f.name))
               for f in dataclasses.fields(DataSpec))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.limit = 10
    lines = []
    data = prepare_data(spec, read_samples(spec), resolve_preprocessing(config), tmp_path, lines.append, False)
    sizes = [len(data.index(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 16 and sizes[0] == 8
    assert (tmp_path / "split.csv").is_file() and any("(seed 3)" in line for line in lines)
