"""The command line's flags as a user meets them: no abbreviations, errors that name the command's own --help, old
flag names that still work with one warning naming the new one, and a --help that is grouped and readable."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from commandline import facetl, in_process, one_line_error
from facetl.cli import MODULES, build_parser, command_module


def test_an_abbreviated_flag_is_refused_and_the_full_name_suggested(capsys):
    result = facetl("train", "--data", "x", "--epoch", "0")  # a fresh process, its output in a file
    line = one_line_error(result, "unrecognized arguments: --epoch", "did you mean --epochs?")
    assert line.startswith("facetl train: error:") and line.endswith("(see facetl train --help)")
    one_line_error(in_process(capsys, "export", "runs/x", "--ou", "y"), "unrecognized arguments: --ou", "did you mean --out?")


@pytest.mark.parametrize("args, command", [(["export", "runs/x", "--bogus"], "export"),
                                           (["inspect", "--out", "somewhere"], "inspect"),
                                           (["evaluate", "runs/x", "--subset", "train"], "evaluate")])
def test_an_error_names_the_commands_own_help(args, command, capsys):
    line = one_line_error(in_process(capsys, *args))
    assert line.startswith(f"facetl {command}: error:") and line.endswith(f"(see facetl {command} --help)"), line


def test_a_command_accepts_only_the_flags_it_uses(capsys):
    for flag, value in (("--folds", "3"), ("--track", "mlflow"), ("--patience", "2")):
        one_line_error(in_process(capsys, "lr-find", "--data", "x", flag, value), f"unrecognized arguments: {flag}")
    help_text = in_process(capsys, "lr-find", "--help").stdout
    assert "--folds" not in help_text and "--track" not in help_text and "--epochs" in help_text


def test_train_help_is_grouped_short_and_shows_no_python_reprs():
    result = facetl("train", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) <= 125, f"facetl train --help is {len(lines)} lines"
    for heading in ("data:", "images and faces:", "model:", "training:", "runtime:", "output:", "tracking:",
                    "distributed:"):
        assert heading in lines, f"no {heading} group in facetl train --help"
    assert any(line.startswith("recipe (left out") for line in lines)
    assert not re.search(r"\bNone\b|\[\d|\['", result.stdout), "a Python repr shows through"
    assert "(default 0.8 0.1 0.1)" in result.stdout
    assert "--track-group" not in result.stdout  # internal: set by sweep and --folds


def test_every_command_help_is_grouped_and_free_of_reprs(capsys):
    for module in MODULES:  # in this process: train's own --help above is the fresh-process check
        name = module.replace("_", "-")
        text = in_process(capsys, name, "--help").stdout
        assert text.startswith(f"usage: facetl {name}"), name
        assert not re.search(r"\bNone\b|\[\d|\['", text), f"facetl {name} --help shows a Python repr"


def test_the_run_to_resume_is_given_as_elsewhere_and_the_older_way_still_parses(capsys):
    parser = build_parser(only="train")
    assert parser.parse_args(["train", "runs/a", "--resume", "--epochs", "3"]).run == "runs/a"
    assert parser.parse_args(["train", "--resume", "runs/a", "--epochs", "3"]).resume == "runs/a"
    one_line_error(in_process(capsys, "train", "runs/nope"), "only to continue it", "facetl train runs/nope --resume")
    one_line_error(in_process(capsys, "train", "runs/nope", "--resume"), "nothing to resume", "runs/nope")


def test_evaluate_split_is_now_subset_and_the_old_name_warns(capsys):
    args = build_parser(only="evaluate").parse_args(["evaluate", "runs/a", "--split", "val"])
    assert args.subset == "val"
    assert capsys.readouterr().err.strip() == "warning: --split is now --subset; the old name will go"
    result = in_process(capsys, "evaluate", "runs/a", "--split", "train")
    one_line_error(result, "--split", "invalid choice: 'train'")


def face_photos(root: Path, shared: Path, n: int = 2) -> Path:
    """Photos of one face each: celebrity crops set in a larger grey frame, in two class folders."""
    for person in sorted(p for p in shared.iterdir() if p.is_dir())[:2]:
        (root / person.name).mkdir(parents=True)
        for crop in sorted(person.glob("*.jpg"))[:n]:
            face = Image.open(crop).convert("RGB").resize((160, 160))
            photo = Image.new("RGB", (320, 280), (128, 128, 128))
            photo.paste(face, (80, 60))
            photo.save(root / person.name / crop.name, quality=95)
    return root


def test_faces_old_size_and_bare_data_still_work_with_warnings_naming_the_new_flags(tmp_path, shared_datasets):
    photos = face_photos(tmp_path / "photos", shared_datasets / "celebrity_faces")
    result = facetl("faces", str(photos), "--out", str(tmp_path / "crops"), "--size", "40")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "warning: --size is now --img-size; the old name will go" in warnings
    assert any("--data" in line for line in warnings)
    crops = [p for p in (tmp_path / "crops").rglob("*.jpg")]
    assert crops and all(Image.open(p).size == (40, 40) for p in crops)
    again = facetl("faces", "--data", str(photos), "--out", str(tmp_path / "crops2"), "--img-size", "48")
    assert again.returncode == 0 and "warning:" not in again.stderr, again.stderr
    assert all(Image.open(p).size == (48, 48) for p in (tmp_path / "crops2").rglob("*.jpg"))


def test_every_command_module_declares_the_interface():
    for module_name in MODULES:
        module = command_module(module_name)
        assert module.NAME == module_name.replace("_", "-")
        assert module.SUMMARY and len(module.EXAMPLES) >= 2
        assert callable(module.add_arguments) and callable(module.run)
