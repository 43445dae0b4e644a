"""The command line as a user meets it: one clear line and a non-zero exit for bad input, and the
commands around a finished run (evaluate, predict, inspect); the demo is tests/test_demo.py."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commandline import facetl, in_process, one_line_error
from facetl.cli import main

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SMILES = DATASETS / "SMILEsmileD" / "SMILEs"
needs_smiles = pytest.mark.skipif(not SMILES.is_dir(), reason=f"SMILEsmileD not found at {SMILES}")


def folder_dataset(root: Path, classes=("a", "b"), per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def test_bad_input_gives_one_line_naming_the_problem(tmp_path, capsys):
    data = folder_dataset(tmp_path / "faces")
    table = tmp_path / "attrs.csv"
    table.write_text("filename,Smiling,Male\n0.jpg,1,-1\n1.jpg,2,1\n")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    folder_dataset(tmp_path / "empty", classes=("a",))
    folder_dataset(tmp_path / "single", classes=("only",))
    cases = [
        (["train", "--data", str(tmp_path / "nope")], ["data not found"]),
        (["train", "--data", str(data), "--backbone", "resnet9000", "--weights", "none"], ["unknown backbone", "vgg16"]),
        (["train", "--data", str(data), "--strategy", "half"], ["strategy"]),
        (["train", "--data", str(data), "--epochs", "zero"], ["epochs", "integer"]),
        (["train", "--data", str(data), "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
        (["train", "--data", str(table), "--target", "Smiling", "--images", str(data / "a")], ["Smiling=", "'2'"]),
        (["train", "--data", str(table), "--target", "Young", "--images", str(data / "a")], ["'Young' not found"]),
        (["train", "--data", str(tmp_path / "empty"), "--weights", "none"], ["contains no images", "b"]),
        (["train", "--data", str(tmp_path / "single"), "--weights", "none"], ["at least two"]),
        (["train", "--data", str(data), "--weights", str(tmp_path / "missing.pt")], ["weights file not found"]),
        (["predict", str(tmp_path / "norun"), str(data)], ["not a finished facetl run"]),
    ]
    for args, needles in cases:
        one_line_error(in_process(capsys, *args), *needles)
    # and as a real process: exit code 2, no traceback, and no half-made run folder left behind
    out = tmp_path / "never"
    one_line_error(facetl(*cases[1][0], "--out", str(out)), "unknown backbone")
    assert not out.exists()


def test_table_image_that_is_absent_is_named(tmp_path, capsys):
    data = folder_dataset(tmp_path / "faces")
    table = tmp_path / "attrs.csv"
    table.write_text("filename,Smiling\n0.jpg,1\n1.jpg,-1\nghost.jpg,1\n")
    one_line_error(in_process(capsys, "train", "--data", str(table), "--target", "Smiling", "--images",
                              str(data / "a"), "--weights", "none"), "ghost.jpg")


def test_unwritable_output_folder_is_refused(tmp_path, capsys):
    data = folder_dataset(tmp_path / "faces")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(in_process(capsys, "train", "--data", str(data), "--weights", "none", "--out", str(blocker / "run")),
                   "cannot write to output folder")


def test_yaml_config_problems_are_reported_together(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: x\nlearning_rate: 0.1\nepochs: ten\nbatch_size: -3\n")
    result = in_process(capsys, "train", "--config", str(config))
    one_line_error(result, "learning_rate: unknown key", "epochs: expected an integer")


def test_imagenet_weights_missing_offline_name_the_file(tmp_path):
    data = folder_dataset(tmp_path / "faces")
    env_home = tmp_path / "torchhome"
    result = subprocess.run([sys.executable, "-m", "facetl", "train", "--data", str(data), "--weights", "imagenet",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            env=dict(os.environ, TORCH_HOME=str(env_home)), timeout=300)
    if result.returncode == 0:
        pytest.skip("ImageNet weights could be downloaded here")
    one_line_error(result, "mobilenet_v2-b0353104.pth", str(env_home / "hub" / "checkpoints"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    if not SMILES.is_dir():
        pytest.skip(f"SMILEsmileD not found at {SMILES}")
    out = tmp_path_factory.mktemp("run") / "smile"
    cache = tmp_path_factory.mktemp("cache")  # module scope: the per-test FACETL_CACHE is not set yet
    code = main(["train", "--data", str(SMILES), "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--limit", "200", "--strategy", "full", "--out", str(out), "--cache-dir", str(cache)])
    assert code == 0
    return out


def test_train_with_config_reproduces_a_run(trained_run, tmp_path):
    rerun = tmp_path / "rerun"
    assert main(["train", "--config", str(trained_run / "config.yaml"), "--out", str(rerun)]) == 0
    assert (rerun / "split.csv").read_bytes() == (trained_run / "split.csv").read_bytes()
    first = json.loads((trained_run / "metrics.json").read_text())
    second = json.loads((rerun / "metrics.json").read_text())
    assert first["accuracy"] == second["accuracy"] and first["f1"] == second["f1"]


def test_evaluate_val_split_writes_its_own_folder(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--subset", "val"]) == 0
    metrics = json.loads((trained_run / "eval-val" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["n_images"] == 20
    assert (trained_run / "eval-val" / "roc.png").is_file()
    assert "accuracy" in capsys.readouterr().out


def test_predict_writes_csv_and_agrees_with_evaluation(trained_run, tmp_path, capsys):
    with open(trained_run / "split.csv", newline="") as f:
        test_rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    images = [str(SMILES / r["path"]) for r in test_rows]
    out = tmp_path / "preds.csv"
    assert main(["predict", str(trained_run), *images, "--out", str(out)]) == 0
    with open(out, newline="") as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == ["path", "label", "probability", "p_negatives", "p_positives"]
    assert all(abs(float(p["p_negatives"]) + float(p["p_positives"]) - 1) < 1e-5 for p in preds)
    assert len(preds) == len(test_rows)
    accuracy = np.mean([p["label"] == r["label"] for p, r in zip(preds, test_rows)])
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["accuracy"])
    assert all(0.5 <= float(p["probability"]) <= 1 for p in preds)
    assert main(["predict", str(trained_run), images[0]]) == 0
    assert "probability" in capsys.readouterr().out


def test_predict_skips_an_unreadable_image_with_a_warning(trained_run, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    good = next((SMILES / "positives" / "positives7").glob("*.jpg"))
    assert main(["predict", str(trained_run), str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "bad.jpg" in captured.err
    assert good.name in captured.out


def test_a_second_train_into_a_finished_run_folder_is_refused(trained_run, capsys):
    result = in_process(capsys, "train", "--data", str(SMILES), "--weights", "none", "--out", str(trained_run))
    one_line_error(result, "already holds a run", "--resume")


@needs_smiles
def test_inspect_finds_smiles_duplicates_filed_under_both_labels(tmp_path, capsys):
    assert main(["inspect", "--data", str(SMILES), "--out", str(tmp_path / "inspect")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    assert summary["classes"] == {"negatives": 9475, "positives": 3690}
    assert summary["conflicting_duplicate_groups"] >= 1
    example = summary["conflicting_examples"][0]
    assert {Path(p).parts[0] for p in example} == {"negatives", "positives"}
    assert (SMILES / example[0]).read_bytes() == (SMILES / example[1]).read_bytes()
    assert "filed under different labels" in out
    for name in ("class_balance.png", "samples.png", "duplicates.csv", "unreadable.csv"):
        assert (tmp_path / "inspect" / name).is_file()


def test_gpu_out_of_memory_names_the_batch_size_and_suggests_a_smaller_one(tmp_path, capsys, monkeypatch):
    import torch
    import facetl.train.fit

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(facetl.train.fit, "fit", out_of_memory)
    data = folder_dataset(tmp_path / "faces")
    result = in_process(capsys, "train", "--data", str(data), "--batch-size", "64", "--out", str(tmp_path / "run"))
    one_line_error(result, "--batch-size 64", "--batch-size 32")


def test_cache_ls_shows_entries_and_clear_frees_them(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    data = folder_dataset(tmp_path / "faces")
    assert main(["inspect", "--data", str(data), "--out", str(tmp_path / "look"), "--cache-dir", cache]) == 0
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", cache]) == 0
    listing = capsys.readouterr().out
    assert "images" in listing and "MiB" in listing
    assert main(["cache", "clear", "--cache-dir", cache]) == 0
    assert "cleared" in capsys.readouterr().out
    assert not list(Path(cache).glob("images/*"))


def test_every_option_and_argument_of_every_command_has_help_and_one_default():
    import argparse
    import re

    from facetl.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            if not re.sub(r"\(default[^)]*\)", "", text).strip():  # a default alone teaches nothing
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
            assert text.count("default") <= 1, f"{name} {action.dest}: default said twice: {text}"
    assert not missing, f"options without help: {missing}"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("facetl ")


def test_commands_run_from_a_source_tree_that_is_not_installed(monkeypatch, capsys):
    from facetl import cli

    def not_installed(name):
        raise cli.PackageNotFoundError(name)

    monkeypatch.setattr(cli, "version", not_installed)  # as `python -m facetl` with the tree on PYTHONPATH
    assert main(["backbones"]) == 0
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "not installed" in capsys.readouterr().out


def subcommands() -> dict:
    import argparse

    from facetl.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices


README = Path(__file__).resolve().parents[1] / "README.md"


def documentation() -> str:
    """README.md and the hand-written pages of the docs site (the generated reference would prove nothing)."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


def example_lines(text: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip().startswith("facetl ")]


def test_every_command_help_ends_with_examples_that_the_readme_shows():
    readme = " ".join(documentation().split())
    for name, command in subcommands().items():
        epilog = command.epilog or ""
        examples = example_lines(epilog)
        assert len(examples) >= 2, f"facetl {name} --help shows fewer than two examples: {epilog!r}"
        help_text = command.format_help()
        assert help_text.rstrip().endswith(epilog.rstrip()), f"facetl {name} --help: examples are not at the end"
        assert all(example in help_text for example in examples), f"facetl {name}: examples were rewrapped"
        missing = [e for e in examples if " ".join(e.split()) not in readme]
        assert not missing, f"facetl {name} --help examples missing from README.md and docs/: {missing}"


# `--flags` the README and docs/ show that belong to no facetl command: torchrun's, the benchmark scripts', mkdocs's
# and docs/screenshot.py's
NOT_FACETL_FLAGS = {"--nnodes", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id",
                    "--markdown", "--quick", "--run", "--smiles", "--celebrity", "--photos", "--true-landmarks",
                    "--only", "--strict", "--runs", "--people-from", "--budget-s", "--cases",
                    "--seconds", "--shared", "--logdir", "--backend-store-uri"}  # tensorboard's and mlflow ui's own
FLAG = r"(?<![\w-])--[a-z][a-z0-9-]*"


def test_readme_and_docs_mention_no_flag_that_does_not_exist():
    """Every flag is documented by the generated reference (tests/test_docs.py), so a new configuration key is a
    field and a help line in config.py; what is written by hand must not name flags that do not exist."""
    import re

    commands = subcommands()
    flags = {name: {o for a in c._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
             for name, c in commands.items()}
    readme = documentation()
    mentioned = set(re.findall(FLAG, readme))
    known = set().union(*flags.values()) | NOT_FACETL_FLAGS | {"--help"}
    assert not mentioned - known, f"README.md or docs/ mention flags no command has: {sorted(mentioned - known)}"
    # on a `facetl train` command line (code block, or inline code), every flag is a train flag
    joined = readme.replace("\\\n", " ")
    train_lines = [m.group(1) for m in re.finditer(r"facetl train([^`\n#]*)", joined)]
    assert len(train_lines) > 5
    wrong = sorted({f for line in train_lines for f in re.findall(FLAG, line)} - flags["train"])
    assert not wrong, f"README.md or docs/ give `facetl train` flags it does not have: {wrong}"
