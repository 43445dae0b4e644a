"""facetl as a hostile user meets it: every bad input below gets one line naming the problem, a non-zero
exit and no traceback, and loses nothing already written (a finished run's files are byte-for-byte the
same afterwards; a refused `train` leaves no run folder behind).

Each case is (command line, words the line must contain); `{run}`, `{data}` and friends are filled in
from the small world the module fixture builds. Cases run in this process through `main()`, as the
installed `facetl` does; a few at the end run as separate processes to prove the two agree.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commandline import facetl, in_process, one_line_error
from facetl.cli import main


class WritesAMarker:
    """Unpickling this creates a file: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_images(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    cache = root / "cache"
    data = root / "faces"
    write_images(data / "no_smile", 12, 0)
    write_images(data / "smile", 12, 1)
    run = root / "run"
    assert main(["train", "--data", str(data), "--weights", "none", "--img-size", "32", "--strategy", "full",
                 "--epochs", "1", "--out", str(run), "--cache-dir", str(cache)]) == 0
    image = next((data / "smile").iterdir())

    table = root / "attrs.csv"
    table.write_text("filename,Smiling,Male\n" + "".join(f"{i:02d}.jpg,{1 if i % 2 else -1},1\n" for i in range(12)))
    bad_values = root / "bad_values.csv"
    bad_values.write_text("filename,Smiling\n00.jpg,1\n01.jpg,2\n")
    ghost = root / "ghost.csv"
    ghost.write_text("filename,Smiling\n00.jpg,1\n01.jpg,-1\nghost.jpg,1\n")
    multi_bad = root / "multi_bad.csv"
    multi_bad.write_text("filename,Smiling,Young\n00.jpg,1,1\n01.jpg,-1,yes\n")
    header_only = root / "header_only.csv"
    header_only.write_text("filename,Smiling\n")
    empty_class = root / "empty_class"
    (empty_class / "a").mkdir(parents=True)
    write_images(empty_class / "b", 6, 2)
    three_classes = root / "three_classes"
    for k, name in enumerate(("a", "b", "c")):
        write_images(three_classes / name, 6, 10 + k)
    one_class = root / "one_class"
    write_images(one_class / "only", 6, 3)
    no_images = root / "no_images"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("no pictures here")
    not_image = root / "not_image.jpg"
    not_image.write_text("this is text, whatever the name says")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(image.read_bytes()[:40])
    zero = root / "zero.jpg"
    zero.write_bytes(b"")
    bomb = root / "bomb.png"  # a 60-byte file whose header claims 40000 x 40000 pixels
    bomb.write_bytes(png_header(40000, 40000))
    text_weights = root / "weights.pth"
    text_weights.write_text("not a tensor file")
    trap = root / "trap.pth"
    with open(trap, "wb") as f:
        pickle.dump({"trap": WritesAMarker(root / "code-ran")}, f)
    list_weights = root / "list.pth"
    torch.save([1, 2, 3], list_weights)
    nan_weights = root / "nan.pth"
    torch.save({"features.0.0.weight": torch.full((32, 3, 3, 3), float("nan"))}, nan_weights)
    foreign_weights = root / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(3, 3)}, foreign_weights)
    configs = {"config_unknown": "data: x\nlearning_rate: 0.1\n", "config_list": "- 1\n- 2\n",
               "config_syntax": "data: [unclosed\n", "config_types": "epochs: ten\nbatch_size: -3\n"}
    config_unknown, config_list, config_syntax, config_types = (root / f"{name}.yaml" for name in configs)
    for name, text in configs.items():
        (root / f"{name}.yaml").write_text(text)
    trapped_run = root / "trapped_run"
    shutil.copytree(run, trapped_run)
    for name in ("best.pt", "last.pt"):
        with open(trapped_run / name, "wb") as f:
            pickle.dump({"model": {}, "trap": WritesAMarker(root / "code-ran")}, f)
    truncated_run = root / "truncated_run"
    shutil.copytree(run, truncated_run)
    for name in ("best.pt", "last.pt"):
        blob = (truncated_run / name).read_bytes()
        (truncated_run / name).write_bytes(blob[: len(blob) // 3])
    no_best = root / "no_best"
    no_best.mkdir()
    (no_best / "config.yaml").write_text((run / "config.yaml").read_text())
    existing = root / "existing.csv"
    existing.write_text("keep me\n")
    a_file = root / "a_file"
    a_file.write_text("")
    full_out = root / "faces_out"
    full_out.mkdir()
    (full_out / "something.txt").write_text("already here")
    return {k: str(v) for k, v in locals().items() if isinstance(v, Path)}


T = ["train", "--data", "{data}", "--weights", "none", "--out", "{new}"]   # a train that must not start
CASES = [
    # --- train: the data
    (["train", "--data", "{root}/nope", "--out", "{new}"], ["data not found", "nope"]),
    (["train", "--data", "{empty_class}", "--weights", "none", "--out", "{new}"], ["contains no images", "a"]),
    (["train", "--data", "{one_class}", "--weights", "none", "--out", "{new}"], ["at least two"]),
    (["train", "--data", "{no_images}", "--weights", "none", "--out", "{new}"], ["no_images"]),
    (["train", "--data", "{table}", "--target", "Young", "--images", "{data}/smile", "--out", "{new}"],
     ["'Young' not found", "Smiling"]),
    (["train", "--data", "{table}", "--images", "{data}/smile", "--out", "{new}"], ["--target"]),
    (["train", "--data", "{bad_values}", "--target", "Smiling", "--images", "{data}/smile", "--out", "{new}"],
     ["Smiling=", "'2'"]),
    (["train", "--data", "{ghost}", "--target", "Smiling", "--images", "{data}/smile", "--weights", "none",
      "--out", "{new}"], ["ghost.jpg"]),
    (["train", "--data", "{header_only}", "--target", "Smiling", "--images", "{data}/smile", "--out", "{new}"],
     ["header_only.csv"]),
    (["train", "--data", "{not_image}", "--out", "{new}"], ["not_image.jpg"]),
    (["train", "--data", "{table}", "--target", "Smiling", "--images", "{root}/nowhere", "--out", "{new}"],
     ["nowhere"]),
    # --- train: the model
    (T + ["--backbone", "resnet9000"], ["unknown backbone", "resnet9000"]),
    (T + ["--strategy", "half"], ["strategy", "half"]),
    (T + ["--strategy", "from:9999"], ["from:9999", "layers 0 to"]),
    (T + ["--strategy", "from:features.nope"], ["no module", "features.nope"]),
    (T + ["--head", "transformer"], ["head", "transformer", "linear, mlp, vgg"]),
    (T + ["--backbone", "vgg16", "--img-size", "16"], ["needs at least 32 pixels"]),
    (["train", "--data", "{data}", "--weights", "{root}/missing.pt", "--out", "{new}"], ["weights file not found"]),
    (["train", "--data", "{data}", "--weights", "{text_weights}", "--out", "{new}"], ["cannot read", "weights.pth"]),
    (["train", "--data", "{data}", "--weights", "{trap}", "--out", "{new}"], ["trap.pth", "refused"]),
    (["train", "--data", "{data}", "--weights", "{list_weights}", "--out", "{new}"], ["list.pth"]),
    (["train", "--data", "{data}", "--weights", "{foreign_weights}", "--out", "{new}"], ["foreign.pth"]),
    (["train", "--data", "{data}", "--weights", "{no_best}", "--out", "{new}"], ["no_best"]),
    (["train", "--data", "{data}", "--weights", "{nan_weights}", "--out", "{new}"], ["nan.pth", "NaN or inf"]),
    # --- train: numbers
    (T + ["--lr", "nan"], ["lr: nan is out of range"]),
    (T + ["--lr", "inf"], ["lr: inf is out of range"]),
    (T + ["--lr", "-0.1"], ["lr: -0.1 is out of range"]),
    (T + ["--lr", "fast"], ["lr", "expected a number", "fast"]),
    (T + ["--epochs", "zero"], ["epochs", "integer"]),
    (T + ["--epochs", "-1"], ["epochs: -1 is out of range"]),
    (T + ["--epochs", "1000000000"], ["epochs: 1000000000 is out of range"]),
    (T + ["--img-size", "100000"], ["img_size: 100000 is out of range"]),
    (T + ["--img-size", "0"], ["img_size: 0 is out of range"]),
    (T + ["--batch-size", "0"], ["batch_size: 0 is out of range"]),
    (T + ["--batch-size", "-5"], ["batch_size: -5 is out of range"]),
    (T + ["--cache-views", "100000"], ["cache_views: 100000 is out of range"]),
    (T + ["--limit", "-1"], ["limit: -1 is out of range"]),
    (T + ["--split", "0.8,0.1,nan"], ["finite"]),
    (T + ["--split", "0.8,0.3,0.1"], ["split"]),
    (T + ["--split", "0.5,half,0.5"], ["split"]),
    (T + ["--min-face", "-3"], ["min_face: -3 is out of range"]),
    (T + ["--nproc", "0"], ["--nproc"]),
    (T + ["--balance", "maybe"], ["balance", "maybe", "none, loss, sampler"]),
    (T + ["--threshold", "1.5"], ["threshold", "1.5", "between 0 and 1"]),
    (T + ["--threshold", "youden"], ["threshold", "youden", "f1 or balanced"]),
    (["train", "--data", "{three_classes}", "--weights", "none", "--threshold", "f1", "--out", "{new}"],
     ["--threshold f1 applies to two classes", "3"]),
    # --- train: choices, files and folders
    (T + ["--faces", "maybe"], ["faces", "maybe", "none, detect"]),
    (T + ["--multi-face", "sometimes"], ["multi_face", "sometimes"]),
    (T + ["--landmarks", "eyeballed"], ["landmarks", "eyeballed", "detector, refined"]),
    (T + ["--colour", "blue"], ["colour", "blue", "rgb, grey"]),
    (T + ["--augment", "flip,melt"], ["melt"]),
    (T + ["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    (T + ["--device", "cuda"], ["no CUDA GPU"]),
    (T + ["--precision", "fp16"], ["fp16 needs a CUDA GPU"]),
    (["train", "--config", "{root}/missing.yaml"], ["missing.yaml"]),
    (["train", "--config", "{config_unknown}"], ["learning_rate: unknown key"]),
    (["train", "--config", "{config_list}"], ["config_list.yaml"]),
    (["train", "--config", "{config_syntax}"], ["config_syntax.yaml"]),
    (["train", "--config", "{config_types}"], ["epochs: expected an integer"]),
    (["train", "--data", "{data}", "--weights", "none", "--out", "{a_file}/run"], ["cannot write to output folder"]),
    (["train", "--data", "{data}", "--weights", "none", "--out", "{run}"], ["already holds a run", "--resume"]),
    (["train", "--resume", "{root}/nope"], ["nothing to resume", "nope"]),
    (["train", "--resume", "{no_best}"], ["nothing to resume", "last.pt"]),
    (["train", "--resume", "{trapped_run}", "--epochs", "3"], ["last.pt", "refused"]),
    (["train", "--resume", "{truncated_run}", "--epochs", "3"], ["cannot read", "last.pt"]),
    # --- sweep
    (["sweep", "--data", "{data}", "--weights", "none", "--out", "{new}", "--grid", "lr"], ["--grid", "KEY=VALUE1,VALUE2"]),
    (["sweep", "--data", "{data}", "--weights", "none", "--out", "{new}", "--grid", "colour_depth=1,2"],
     ["colour_depth"]),
    (["sweep", "--data", "{data}", "--weights", "none", "--out", "{new}", "--grid", "lr=abc,0.1"], ["lr", "abc"]),
    # --- evaluate
    (["evaluate", "{root}/norun"], ["not a finished facetl run"]),
    (["evaluate", "{trapped_run}"], ["best.pt", "refused"]),
    (["evaluate", "{truncated_run}"], ["cannot read", "best.pt"]),
    (["evaluate", "{run}", "--split", "train"], ["--split", "train"]),
    (["evaluate", "{run}", "--device", "cuda"], ["no CUDA GPU"]),
    (["evaluate", "{run}", "--data", "{root}/moved_away"], ["moved_away"]),
    (["evaluate", "{run}", "--tta", "mirror"], ["--tta", "'mirror'", "none", "flip"]),
    # --- predict
    (["predict", "{root}/norun", "{image}"], ["not a finished facetl run"]),
    (["predict", "{run}", "{root}/missing.jpg"], ["not found", "missing.jpg"]),
    (["predict", "{run}", "{no_images}"], ["no images found", "no_images"]),
    (["predict", "{run}", "{not_image}"], ["none of the images could be read"]),
    (["predict", "{run}", "{zero}"], ["none of the images could be read"]),
    (["predict", "{run}", "{truncated}"], ["none of the images could be read"]),
    (["predict", "{run}", "{bomb}"], ["none of the images could be read"]),
    (["predict", "{run}", "{image}", "--out", "{existing}"], ["exists", "--overwrite"]),
    (["predict", "{run}", "{image}", "--out", "{run}/config.yaml", "--overwrite"], ["run folder"]),
    (["predict", "{run}", "{image}", "--engine", "onnx"], ["model.onnx", "facetl export"]),
    (["predict", "{run}", "{image}", "--min-face", "0"], ["--min-face", "0 is out of range"]),
    (["predict", "{run}", "{image}", "--faces", "sometimes"], ["--faces"]),
    (["predict", "{trapped_run}", "{image}"], ["best.pt", "refused"]),
    (["predict", "{run}", "{image}", "--tta", "FLIP"], ["--tta", "'FLIP'", "none", "flip"]),
    # --- faces, inspect, cache, backbones, export, demo, and no command at all
    (["faces", "{root}/nope", "--out", "{new}"], ["nope"]),
    (["faces", "{data}", "--out", "{full_out}"], ["faces_out", "empty"]),
    (["faces", "{data}", "--out", "{new}", "--size", "0"], ["--size", "0 is out of range (8 to 2048)"]),
    (["faces", "{data}", "--out", "{new}", "--size", "100000"], ["--size"]),
    (["faces", "{data}", "--out", "{new}", "--landmarks", "eyeballed"], ["--landmarks", "eyeballed", "refined"]),
    (["inspect", "--data", "{root}/nope", "--out", "{new}"], ["nope"]),
    (["inspect", "--data", "{table}", "--images", "{data}/smile", "--target", "Young", "--out", "{new}"],
     ["'Young' not found"]),
    (["cache", "sweep"], ["sweep"]),
    (["backbones", "resnet9000"], ["unknown backbone", "resnet9000"]),
    (["export", "{root}/norun"], ["not a finished facetl run"]),
    (["export", "{run}", "--format", "tflite"], ["tflite", "onnx"]),
    (["export", "{trapped_run}"], ["best.pt", "refused"]),
    (["demo", "--epochs", "0"], ["epochs"]),
    (["demo", "--source", "mars", "--out", "{new}"], ["--source", "'mars'", "imagenet", "faces"]),
    (["demo", "--pretrain-epochs", "0", "--out", "{new}"], ["--pretrain-epochs", "0 is out of range"]),
    (["demo", "--pretrain-limit", "5", "--out", "{new}"], ["--pretrain-limit", "5 is out of range"]),
    (["demo", "--source", "faces", "--pretrain-data", "{root}/nope", "--out", "{new}"],
     ["no face data to pretrain on", "nope", "--pretrain-data"]),
    # --- person-safe splits and cross-validation
    (T + ["--folds", "1"], ["folds: 1 is out of range"]),
    (T + ["--split-by", "identity"], ["--split-by identity", "class folders"]),
    (["train", "--data", "{table}", "--target", "Smiling", "--images", "{data}/smile", "--split-by", "identity",
      "--weights", "none", "--out", "{new}"], ["--split-by column 'identity' not found", "Smiling, Male"]),
    (["train", "--data", "{table}", "--target", "Smiling", "--images", "{data}/smile", "--split-by", "Male",
      "--weights", "none", "--out", "{new}"], ["--split-by Male", "one group"]),
    # --- calibration and metrics per group
    (T + ["--calibrate", "platt"], ["calibrate", "platt", "none, temperature"]),
    (T + ["--groups", "identity"], ["--groups identity", "class folders", "path:REGEX"]),
    (T + ["--groups", "path:("], ["groups", "path:(", "not a regular expression"]),
    (["train", "--data", "{table}", "--target", "Smiling", "--images", "{data}/smile", "--groups", "identity",
      "--weights", "none", "--out", "{new}"], ["--groups column 'identity' not found", "Smiling, Male"]),
    (["train", "--data", "{table}", "--target", "Smiling", "--images", "{data}/smile", "--groups", "Male",
      "--weights", "none", "--out", "{new}"], ["--groups Male", "one group", "two groups"]),
    (["evaluate", "{run}", "--groups", "identity"], ["--groups identity", "class folders"]),
    # --- the training recipe
    (T + ["--unfreeze", "1:frozen,3:full"], ["unfreeze", "--strategy gradual"]),
    (T + ["--strategy", "gradual", "--unfreeze", "1:frozen,3:sideways"], ["unfreeze", "sideways"]),
    (T + ["--strategy", "gradual", "--unfreeze", "1:full,2:frozen"], ["stage at epoch 2", "only unfreeze more"]),
    (T + ["--optimizer", "rmsprop"], ["optimizer", "rmsprop", "adamw"]),
    (T + ["--ema", "2"], ["ema", "between 0 and 1"]),
    (T + ["--lr-decay", "0"], ["lr_decay", "out of range"]),
    (["lr-find", "--data", "{data}", "--weights", "none", "--scheduler", "step", "--out", "{new}"],
     ["scheduler", "step", "onecycle"]),
    (T + ["--augment", "flip,shift:500"], ["augment", "shift:500", "0 to 90"]),
    (["explode"], ["explode"]),
    # --- train: several attributes at once (--target COL1,COL2 or all)
    (["train", "--data", "{table}", "--target", "Smiling,Bald", "--images", "{data}/smile", "--out", "{new}"],
     ["'Bald' not found", "Smiling"]),
    (["train", "--data", "{table}", "--target", "Smiling,Male", "--images", "{data}/smile", "--out", "{new}"],
     ["Male has a single value"]),
    (["train", "--data", "{multi_bad}", "--target", "Smiling,Young", "--images", "{data}/smile", "--out", "{new}"],
     ["Young=", "'yes'"]),
    (["train", "--data", "{bad_values}", "--target", "all", "--images", "{data}/smile", "--out", "{new}"],
     ["--target all", "no column of 1/0/-1"]),
    (T + ["--target", "Smiling,Male"], ["--target Smiling,Male is for attribute tables", "class folders"]),
    (T + ["--target", "Smiling,"], ["lists one column"]),
    (T + ["--target", "Smiling,Smiling"], ["names a column twice"]),
    (T + ["--target", "Smiling,Male", "--balance", "sampler"], ["balance: sampler", "multi-attribute", "loss"]),
    (T + ["--target", "all", "--calibrate", "temperature"], ["calibrate: temperature", "multi-attribute"]),
    (T + ["--target", "Smiling,Male", "--positive", "Smiling"], ["positive", "multi-attribute"]),
    (T + ["--target", "Smiling,Male", "--folds", "3"], ["folds", "multi-attribute"]),
    (["inspect", "--data", "{table}", "--target", "Smiling,Male", "--images", "{data}/smile", "--out", "{new}"],
     ["takes one --target column"]),
    (["faces", "{data}", "--out", "{new}", "--target", "all"], ["takes one --target column"]),
    (["demo", "--source", "faces", "--pretrain-data", "{data}", "--data", "{root}/nope", "--out", "{new}"],
     ["--data", "nope", "not a folder of class folders"]),
]


def fill(args: list[str], world: dict[str, str]) -> list[str]:
    return [a.format(**world) for a in args]


def digests(folder: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.mark.parametrize("args, needles", CASES, ids=[" ".join(a[:1] + a[3:5]) + f" #{i}" for i, (a, _) in
                                                      enumerate(CASES)])
def test_bad_input_is_one_line_and_loses_nothing(world, tmp_path, args, needles, capsys):
    world = dict(world, new=str(tmp_path / "new"))
    before = {name: digests(world[name]) for name in ("run", "trapped_run", "truncated_run")}
    existing = Path(world["existing"]).read_text()
    one_line_error(in_process(capsys, *fill(args, world)), *needles)
    assert not Path(world["new"]).exists(), "a refused command left a folder behind"
    assert {name: digests(world[name]) for name in before} == before, "a run folder's files changed"
    assert Path(world["existing"]).read_text() == existing
    assert not Path(world["root"], "code-ran").exists(), "a file we were handed ran code"


def test_there_are_more_than_sixty_kinds_of_bad_input():
    assert len(CASES) >= 60


@pytest.mark.parametrize("index", [0] + [pytest.param(i, marks=pytest.mark.slow) for i in (11, 19, 64, 71)])
def test_the_installed_command_says_the_same_in_a_fresh_process(world, tmp_path, index):
    args, needles = CASES[index]
    one_line_error(facetl(*fill(args, dict(world, new=str(tmp_path / "new")))), *needles)
    assert not (tmp_path / "new").exists()
