"""Where outputs go, checked before the work, and what was done kept (issue 21: nothing of the user's is
ever touched).

- No command writes inside the folders it reads: a run inside its data would have its plots read as the
  next run's training images, explanations inside their input folder the next explain's inputs.
- An output that cannot be written (a missing folder, a file where a folder should be) is one line naming
  the flag, before the work; a file name at the length limit is explained, and one image's failure to
  write keeps every other image's pictures.
- Progress without a terminal (output to a file, as `> log 2>&1` or under nohup) works in every command
  that shows it.
- A normalisation that divides by 0 is refused when the options are read, with no run folder made.

The runs here are tiny (24 images of 24 px, one epoch at 32 px) and trained once for the module.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commandline import ENV, facetl, in_process, one_line_error
from facetl.progress import LineProgress

TINY = ["--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--batch-size", "8",
        "--precise-bn", "off"]


def write_images(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")


def facetl_to_file(log: Path, *args: str) -> tuple[int, str]:
    """The real command with stdout and stderr in a file (`facetl ... > log 2>&1`): no terminal anywhere."""
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "facetl", *args], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=ENV, timeout=600).returncode
    return code, log.read_text()


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Data, and a run trained from it with its output going to a file (the first no-terminal check)."""
    root = tmp_path_factory.mktemp("outputs")
    data, cache = root / "data", root / "cache"
    write_images(data / "negatives", 12, 0)
    write_images(data / "positives", 12, 1)
    code, log = facetl_to_file(root / "train.log", "train", "--data", str(data), *TINY, "--out", str(root / "run"),
                               "--cache-dir", str(cache))
    assert code == 0 and "Traceback" not in log, log
    assert (root / "run" / "best.pt").is_file()
    return {"root": root, "data": data, "cache": cache, "run": root / "run"}


# --- item 5: an output inside the folders a command reads ----------------------------------------------------

INSIDE_DATA = {
    "train": ["train", "--data", "{data}", *TINY, "--out", "{inside}"],
    "train --nproc 2": ["train", "--data", "{data}", *TINY, "--nproc", "2", "--out", "{inside}"],
    "train --folds 2": ["train", "--data", "{data}", *TINY, "--folds", "2", "--out", "{inside}"],
    "lr-find": ["lr-find", "--data", "{data}", *TINY, "--out", "{inside}"],
    "sweep": ["sweep", "--data", "{data}", *TINY, "--grid", "lr=1e-3,1e-4", "--out", "{inside}"],
    "sweep --folds 2": ["sweep", "--data", "{data}", *TINY, "--folds", "2", "--grid", "lr=1e-3", "--out", "{inside}"],
    "inspect": ["inspect", "--data", "{data}", "--out", "{inside}"],
    "inspect, --out the data": ["inspect", "--data", "{data}", "--out", "{data}"],
}


@pytest.mark.parametrize("command", list(INSIDE_DATA))
def test_an_output_inside_the_data_is_refused_before_any_folder_is_made(world, command, capsys):
    data = world["data"]
    inside = data / "positives" / "run"
    before = digests(data)
    args = [a.format(data=data, inside=inside, cache=world["cache"]) for a in INSIDE_DATA[command]]
    one_line_error(in_process(capsys, *args, "--cache-dir", str(world["cache"])), "inside the data folder",
                   str(data))
    assert not inside.exists(), "a refused command left a folder in the data"
    assert digests(data) == before, "the data changed"


def test_explain_refuses_an_output_inside_the_folder_it_explains(world, capsys):
    folder = world["data"] / "positives"
    before = digests(folder)
    line = one_line_error(in_process(capsys, "explain", str(world["run"]), str(folder), "--out",
                                     str(folder / "explained"), "--device", "cpu"),
                          "inside the input folder", str(folder))
    assert "--out" in line
    assert not (folder / "explained").exists()
    assert digests(folder) == before


def test_the_default_run_folder_inside_the_data_is_refused_too(world):
    """`cd DATA && facetl train --data .`: the default runs/... would be inside the data."""
    data = world["data"]
    before = digests(data)
    one_line_error(facetl("train", "--data", ".", *TINY, "--cache-dir", str(world["cache"]), cwd=data),
                   "the default --out", "inside the data folder")
    assert not (data / "runs").exists()
    assert digests(data) == before


# --- item 8: progress without a terminal ---------------------------------------------------------------------

def test_explain_of_more_than_twenty_images_with_its_output_in_a_file(world, tmp_path):
    out = tmp_path / "explained"
    code, log = facetl_to_file(tmp_path / "explain.log", "explain", str(world["run"]), str(world["data"]),
                               "--out", str(out), "--device", "cpu")
    assert code == 0 and "Traceback" not in log, log
    assert len(list(out.glob("*.gradcam.png"))) == 24 and len(list(out.glob("*.features.png"))) == 24
    assert "explained 24 image(s)" in log


PROGRESS_COMMANDS = {
    "evaluate": ["evaluate", "{run}", "--device", "cpu"],
    "inspect": ["inspect", "--data", "{data}", "--out", "{out}", "--cache-dir", "{cache}"],
    "lr-find": ["lr-find", "--data", "{data}", *TINY, "--out", "{out}", "--cache-dir", "{cache}"],
    "train --folds 2": ["train", "--data", "{data}", *TINY, "--folds", "2", "--out", "{out}", "--cache-dir",
                        "{cache}"],
    "faces": ["faces", "{data}", "--out", "{out}", "--size", "32"],
}


@pytest.mark.parametrize("command", list(PROGRESS_COMMANDS))
def test_every_command_with_progress_runs_with_its_output_in_a_file(world, tmp_path, command):
    args = [a.format(run=world["run"], data=world["data"], cache=world["cache"], out=tmp_path / "out")
            for a in PROGRESS_COMMANDS[command]]
    code, log = facetl_to_file(tmp_path / "log", *args)
    assert "Traceback" not in log and "\r" not in log, log
    assert code == 0, log


def test_line_progress_answers_what_tqdm_answers(capsys):
    """Callers may ask a bar what they would ask tqdm: whether it shows (disable), and set what it says."""
    bar = LineProgress(total=4, desc="explaining", unit="img", every=0.0)
    assert bar.disable is False
    bar.set_description("caching")
    bar.set_postfix(loss=0.5)
    bar.update(1)
    bar.write("a message")
    bar.refresh()
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("caching: 1/4") and lines[0].endswith("loss=0.5"), lines
    assert "a message" in lines


# --- item 11: outputs checked before the work, and what was done kept ------------------------------------

def test_predict_out_in_a_missing_folder_is_refused_before_the_work(world, tmp_path, capsys):
    out = tmp_path / "nodir" / "x.csv"
    one_line_error(in_process(capsys, "predict", str(world["run"]), str(world["data"]), "--out", str(out),
                              "--device", "cpu"), "--out", str(out), "does not exist")
    assert not (tmp_path / "nodir").exists()
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left"


def test_predict_out_onto_a_folder_is_refused(world, tmp_path, capsys):
    one_line_error(in_process(capsys, "predict", str(world["run"]), str(world["data"]), "--out", str(tmp_path),
                              "--overwrite", "--device", "cpu"), "--out", str(tmp_path), "is a folder")


def test_explain_out_onto_a_file_is_one_line_and_leaves_the_file(world, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    one_line_error(in_process(capsys, "explain", str(world["run"]), str(world["data"] / "positives" / "00.jpg"),
                              "--out", str(existing), "--device", "cpu"), "--out", str(existing), "is a file")
    assert existing.read_text() == "mine"


def test_explain_writes_an_image_whose_name_is_as_long_as_names_go(world, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    long_name = "x" * 241 + ".jpg"  # 245 bytes: legal (NAME_MAX 255), too long once '.features.png' is added
    (photos / long_name).write_bytes((world["data"] / "positives" / "00.jpg").read_bytes())
    (photos / "short.jpg").write_bytes((world["data"] / "positives" / "01.jpg").read_bytes())
    out = tmp_path / "explained"
    result = in_process(capsys, "explain", str(world["run"]), str(photos), "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and all(len(n.encode()) <= 255 for n in names), names
    assert "short.gradcam.png" in names and sum(n.startswith("x" * 100) for n in names) == 2
    # the names are the same the next time: a rerun without --overwrite refuses rather than doubling them
    one_line_error(in_process(capsys, "explain", str(world["run"]), str(photos), "--out", str(out),
                              "--device", "cpu"), "--overwrite")


def test_one_image_that_cannot_be_written_keeps_the_others(world, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, source in (("a", "00"), ("b", "01"), ("c", "02")):
        (photos / f"{name}.jpg").write_bytes((world["data"] / "positives" / f"{source}.jpg").read_bytes())
    out = tmp_path / "explained"
    (out / "b.gradcam.png").mkdir(parents=True)  # a folder where b's picture would go: even --overwrite cannot
    (out / "b.gradcam.png" / "keep.txt").write_text("mine")
    result = in_process(capsys, "explain", str(world["run"]), str(photos), "--out", str(out), "--overwrite",
                        "--device", "cpu")
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    for name in ("a", "c"):
        assert (out / f"{name}.gradcam.png").is_file() and (out / f"{name}.features.png").is_file()
    assert "b.jpg" in result.stderr and "explained 2 image(s)" in result.stdout
    assert (out / "b.gradcam.png" / "keep.txt").read_text() == "mine"


# --- item 12: a normalisation that divides by zero ----------------------------------------------------------

# (nan and inf were refused before, in other words; 0 trained to a NaN loss and -1 trained on)
@pytest.mark.parametrize("values, needle", [("0.5,0", "stds"), ("0.5,-1", "stds"), ("0.5,0.5,0.5,0.2,0,0.2", "stds"),
                                            ("0.5,inf", "normalize"), ("nan,0.5", "normalize")])
def test_a_normalisation_that_divides_by_zero_is_refused_with_no_run_folder(world, tmp_path, values, needle,
                                                                            capsys):
    out = tmp_path / "run"
    one_line_error(in_process(capsys, "train", "--data", str(world["data"]), *TINY, "--normalize", values,
                              "--out", str(out), "--cache-dir", str(world["cache"])), "normalize", needle)
    assert not out.exists(), "a refused train left a run folder"
