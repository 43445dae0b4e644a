"""TrainConfig: YAML and flag values coerced to their types, every problem reported at once, round trip."""
from __future__ import annotations

import dataclasses
import re

import pytest

from facetl.config import TrainConfig, build_config, coerce, dump_yaml, load_yaml
from facetl.errors import FacetlError


def valid(**changes) -> TrainConfig:
    config = build_config({"data": "faces/", **changes})
    config.check()
    return config


def problem_keys(message: str) -> set[str]:
    """The keys named in an 'invalid configuration: key: reason; key: reason' message."""
    body = message.split("invalid configuration: ", 1)[1]
    return {part.split(":", 1)[0].strip() for part in body.split("; ")}


# ---------------------------------------------------------------- coercion


def test_yaml_values_get_the_field_types(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: faces/\n"
        "lr: 1e-4\n"              # PyYAML reads this as the string '1e-4'
        "epochs: '3'\n"
        "batch-size: 16\n"        # dashes as on the command line
        "split: [0.7, 0.2, 0.1]\n"
        "augment: flip,rotate:15\n"
        "cache: no\n"
        "img_size: null\n"
        "normalize: '0.5,0.25'\n"
        "positive: Smiling\n",
        encoding="utf-8")
    config = build_config(load_yaml(path))
    assert config.lr == pytest.approx(1e-4) and isinstance(config.lr, float)
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.batch_size == 16
    assert config.split == [0.7, 0.2, 0.1]
    assert config.augment == ["flip", "rotate:15"]
    assert config.cache is False
    assert config.img_size is None
    assert config.normalize == [0.5, 0.25]
    assert config.positive == "Smiling"
    config.check()


def test_flag_strings_are_coerced():
    config = build_config({"data": "x", "epochs": "5", "lr": "0.001", "cache": "false", "split": "0.6,0.2,0.2",
                           "img_size": "none", "augment": "flip, jitter", "dropout": "0", "limit": " 40 "})
    assert (config.epochs, config.lr, config.cache, config.dropout, config.limit) == (5, 0.001, False, 0.0, 40)
    assert config.split == [0.6, 0.2, 0.2]
    assert config.img_size is None
    assert config.augment == ["flip", "jitter"]  # items are stripped


def test_yaml_file_with_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_text("epochs: 2\n", encoding="utf-8-sig")
    assert load_yaml(path) == {"epochs": 2}


@pytest.mark.parametrize("key, value", [
    ("epochs", 2.5), ("epochs", True), ("epochs", "ten"), ("lr", "fast"), ("lr", False),
    ("cache", "maybe"), ("split", 0.8), ("data", ["a", "b"]), ("batch_size", "big"),
])
def test_wrong_types_are_refused(key, value):
    with pytest.raises(ValueError):
        coerce(key, value)
    with pytest.raises(FacetlError, match=re.escape(f"{key}:")):
        build_config({key: value})


def test_unknown_keys_and_wrong_types_are_reported_together():
    with pytest.raises(FacetlError) as info:
        build_config({"epoch": 3, "lr": "fast", "batch_size": 2.5, "color": "red", "cache": "perhaps",
                      "epochs": 4})
    message = str(info.value)
    assert problem_keys(message) == {"epoch", "lr", "batch_size", "color", "cache"}
    assert "epoch: unknown key" in message and "color: unknown key" in message
    assert "'fast'" in message and "2.5" in message


def test_flags_win_over_yaml_and_leave_it_untouched(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("data: faces/\nepochs: 7\nlr: 0.01\naugment: [flip]\n")
    base = build_config(load_yaml(path))
    merged = build_config({"epochs": "2", "augment": "jitter"}, base=base)
    assert (merged.epochs, merged.lr, merged.augment, merged.data) == (2, 0.01, ["jitter"], "faces/")
    assert (base.epochs, base.augment) == (7, ["flip"])


@pytest.mark.parametrize("text, reason", [
    ("data: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_yaml_files_are_refused(tmp_path, text, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FacetlError, match=reason):
        load_yaml(path)


def test_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(FacetlError, match="nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert build_config(load_yaml(path)) == TrainConfig()


# ---------------------------------------------------------------- check()


def test_defaults_with_data_are_valid():
    valid()
    valid(strategy="from:features.14", augment="flip,jitter,rotate:20,none", normalize="0.5,0.5,0.5,0.2,0.2,0.2")


def test_data_is_required():
    with pytest.raises(FacetlError, match="data: required"):
        TrainConfig().check()


def test_every_out_of_range_value_is_reported_at_once():
    with pytest.raises(FacetlError) as info:  # when the config is built, not later
        build_config({
            "data": "x", "epochs": -1, "batch_size": 0, "lr": 0, "cache_views": -1, "img_size": 4, "limit": 5,
            "dropout": 1.0, "duplicates": "maybe", "head": "huge", "device": "tpu", "precision": "fp8",
            "select": "train_loss", "scheduler": "step", "augment": "flip,blur", "strategy": "half",
            "normalize": "1,2,3", "split": "0.5,0.5,0.5",
        })
    assert problem_keys(str(info.value)) == {
        "epochs", "batch_size", "lr", "cache_views", "img_size", "limit", "dropout", "duplicates", "head",
        "device", "precision", "select", "scheduler", "augment", "strategy", "normalize", "split"}
    assert "'blur'" in str(info.value)


@pytest.mark.parametrize("changes, key", [
    ({"lr": -0.1}, "lr"),
    ({"split": "0,0.5,0.5"}, "split"),
    ({"split": "0.9,0,0.1"}, "split"),
    ({"split": "0.8,0.2"}, "split"),
    ({"split": "1.2,-0.1,-0.1"}, "split"),
    ({"augment": "rotate:many"}, "augment"),
    ({"augment": "flip:3"}, "augment"),
    ({"dropout": -0.1}, "dropout"),
])
def test_single_bad_value_is_named(changes, key):
    with pytest.raises(FacetlError) as info:
        build_config({"data": "x", **changes})
    assert problem_keys(str(info.value)) == {key}


def test_landmarks_choice_reaches_the_face_alignment_the_run_records():
    assert valid(faces="detect").face_alignment().landmarks == "refined"  # new runs refine
    assert valid(faces="detect", landmarks="detector").face_alignment().landmarks == "detector"
    assert valid(landmarks="detector").face_alignment() is None  # face crops: nothing is aligned
    with pytest.raises(FacetlError, match="landmarks: 'eyes' is not one of detector, refined"):
        valid(faces="detect", landmarks="eyes")


def test_test_fraction_may_be_zero():
    valid(split="0.8,0.2,0")


def test_a_config_built_directly_or_replaced_checks_itself():
    """Issue 31 item 4: TrainConfig checks itself when built, whoever builds it: no path skips the check."""
    with pytest.raises(FacetlError) as info:
        TrainConfig(data="x", epochs=-1, strategy="half")
    assert str(info.value).count("\n") == 0 and problem_keys(str(info.value)) == {"epochs", "strategy"}
    with pytest.raises(FacetlError, match=r"^invalid configuration: unfreeze: applies with --strategy gradual"):
        dataclasses.replace(valid(), unfreeze="1:frozen,2:full")
    assert TrainConfig().data is None  # a partial config (a sweep's base) may still lack its data


def test_a_partial_yaml_with_an_invalid_value_is_one_line(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("epochs: 3\nbatch_size: 0\nhead: huge\n", encoding="utf-8")
    with pytest.raises(FacetlError) as info:
        build_config(load_yaml(path))
    assert "\n" not in str(info.value) and problem_keys(str(info.value)) == {"batch_size", "head"}


def test_an_old_run_config_yaml_with_tracking_keys_loads(tmp_path):
    """Issue 31 item 2: the tracking keys left TrainConfig; a run's config.yaml from before still loads, and its
    tracking settings are read from it."""
    from facetl.track import tracking_settings

    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(valid(epochs=2)) + "track:\n- tensorboard\n- mlflow\ntrack_dir: null\n"
                    "tracking_uri: sqlite:///x.db\ntrack_group: /runs/grid\n", encoding="utf-8")
    values = load_yaml(path)
    assert build_config(values) == valid(epochs=2)
    tracking = tracking_settings(values)
    assert (tracking.trackers, tracking.track_dir, tracking.tracking_uri, tracking.track_group) == (
        ["tensorboard", "mlflow"], None, "sqlite:///x.db", "/runs/grid")
    assert not {"track", "track_dir", "tracking_uri", "track_group"} & set(TrainConfig.__dataclass_fields__)


# ---------------------------------------------------------------- round trip


def test_dump_and_load_round_trip(tmp_path):
    config = valid(target="Smiling", positive="yes", images="img dir/", split="0.7,0.15,0.15", lr=1e-5,
                   augment="flip,rotate:12.5", normalize="0.5,0.5", strategy="from:7", weights="none",
                   img_size=64, limit=100, cache=False, workers=2, out="runs/a b")
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    again = build_config(load_yaml(path))
    assert again == config
    again.check()


def test_dump_lists_every_key():
    text = dump_yaml(TrainConfig())
    for name in TrainConfig.__dataclass_fields__:
        assert re.search(rf"^{name}:", text, re.M), name
