"""Issue 29: where outputs may go, one rule for every command and every output flag. An output is never one of
the command's inputs (even with --overwrite), never inside the data, never inside another run; a tracker writes
only where its run lives, and a copied or moved run keeps its tracking to itself.

Every case runs the real command in a fresh process with its output going to a file, and the data-loss cases
hash every file before and after. The runs are tiny (24 images of 24 px, one epoch at 32 px).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from commandline import ENV, one_line_error, write_images

TINY = ["--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--batch-size", "8",
        "--precise-bn", "off"]


def facetl_logged(log: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The real command with stdout and stderr in a file (`facetl ... > log 2>&1`), seen as a finished process
    whose stderr is that file (nothing is printed on stdout before a refusal)."""
    with open(log, "w") as f:
        code = subprocess.run([*prefix, sys.executable, "-m", "facetl", *args], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=ENV, timeout=600).returncode
    return subprocess.CompletedProcess(args, code, "", log.read_text())


def digests(root: Path) -> dict[str, str]:
    """Every file under root -> the SHA-256 of its bytes; every folder -> 'dir'."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Data, a run trained from it, photos and a short video to predict on."""
    root = tmp_path_factory.mktemp("places")
    data, cache = root / "data", root / "cache"
    write_images(data / "negatives", 12, 0)
    write_images(data / "positives", 12, 1)
    result = facetl_logged(root / "train.log", "train", "--data", str(data), *TINY, "--out", str(root / "runs" / "a"),
                           "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    write_images(root / "photos", 3, 2)
    return {"root": root, "data": data, "cache": cache, "run": root / "runs" / "a", "photos": root / "photos",
            "clip": _clip(root / "media" / "clip.mp4")}


def _clip(path: Path) -> Path:
    av = pytest.importorskip("av")
    del av
    from facetl.data.video import VideoWriter

    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(5)
    with VideoWriter(path, 64, 48, 10) as writer:
        for _ in range(6):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


# --- item 1: predict --out onto an input ---------------------------------------------------------------------

PREDICT_ONTO_INPUT = {
    "a video, --out the video": (["{clip}"], "{clip}", "is the input"),
    "a photo, --out the photo": (["{photos}/00.jpg"], "{photos}/00.jpg", "is the input"),
    "a folder, --out a photo in it": (["{photos}"], "{photos}/01.jpg", "inside the input folder"),
    "a folder of videos, --out the video": (["{media}"], "{clip}", "inside the input folder"),
}


@pytest.mark.parametrize("case", list(PREDICT_ONTO_INPUT))
def test_predict_never_writes_over_an_input_even_with_overwrite(world, tmp_path, case):
    inputs, out, words = PREDICT_ONTO_INPUT[case]
    places = {"clip": world["clip"], "photos": world["photos"], "media": world["clip"].parent}
    inputs = [i.format(**places) for i in inputs]
    out = out.format(**places)
    before = {name: digests(world[name].parent if name == "clip" else world[name]) for name in ("clip", "photos")}
    result = facetl_logged(tmp_path / "log", "predict", str(world["run"]), *inputs, "--out", out, "--overwrite",
                           "--device", "cpu")
    one_line_error(result, "--out", words)
    assert before == {name: digests(world[name].parent if name == "clip" else world[name])
                      for name in ("clip", "photos")}


def test_predict_annotate_over_an_input_video_folder_is_refused_before_the_work(world, tmp_path):
    media = world["clip"].parent
    before = digests(media)
    result = facetl_logged(tmp_path / "log", "predict", str(world["run"]), str(media), "--annotate", str(media),
                           "--overwrite", "--device", "cpu")
    one_line_error(result, "--annotate", "inside the input folder")
    assert digests(media) == before


def test_predict_out_onto_an_annotated_photo_keeps_both_outputs_apart(world, tmp_path):
    """--out ann/00.annotated.png with --annotate ann: the table and the annotated photo would be one file, and one
    of them would be lost while both were reported written."""
    (tmp_path / "ann").mkdir()
    result = facetl_logged(tmp_path / "log", "predict", str(world["run"]), str(world["photos"] / "00.jpg"),
                           "--out", str(tmp_path / "ann" / "00.annotated.png"), "--annotate", str(tmp_path / "ann"),
                           "--overwrite", "--device", "cpu")
    one_line_error(result, "--out and an annotated photo would both be")
    assert not any((tmp_path / "ann").iterdir())


def test_the_same_photo_given_twice_is_read_once(world, tmp_path):
    photo = world["photos"] / "00.jpg"
    result = facetl_logged(tmp_path / "log", "predict", str(world["run"]), str(photo), str(photo),
                           str(world["photos"]), "--out", str(tmp_path / "p.csv"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "p.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 3, rows  # the folder's three photos, 00.jpg among them, each once
    assert "given more than once (3 times)" in result.stderr


# --- items 2 and 21: tracking places, checked before any work ----------------------------------------------------

TRACKING_PLACES = {
    "an MLflow database in the data": (["--track", "mlflow", "--tracking-uri", "sqlite:///{data}/m.db"],
                                       "--tracking-uri", "inside the data folder"),
    "an MLflow file store in the data": (["--track", "mlflow", "--tracking-uri", "{data}/mlruns"],
                                         "--tracking-uri", "inside the data folder"),
    "TensorBoard's events in the data": (["--track", "tensorboard", "--track-dir", "{data}/tb"], "--track-dir",
                                         "inside the data folder"),
    "an MLflow database in another run": (["--track", "mlflow", "--tracking-uri", "sqlite:///{run}/m.db"],
                                          "--tracking-uri", "inside the run folder"),
    "TensorBoard's events in another run": (["--track", "tensorboard", "--track-dir", "{run}/tb"], "--track-dir",
                                            "inside the run folder"),
    "--tracking-uri a folder": (["--track", "mlflow", "--tracking-uri", "sqlite:///{root}/cache"],
                                "--tracking-uri", "is a folder"),
    "--tracking-uri a plain folder": (["--track", "mlflow", "--tracking-uri", "{root}/cache"], "--tracking-uri",
                                      "file store"),
    "--tracking-uri an unknown scheme": (["--track", "mlflow", "--tracking-uri", "garbage://x"], "--tracking-uri",
                                         "garbage"),
}


@pytest.mark.parametrize("command", ["train", pytest.param("sweep", marks=pytest.mark.slow)])  # sweep: CI's slow set
@pytest.mark.parametrize("case", list(TRACKING_PLACES))
def test_a_tracking_place_in_the_data_another_run_or_unusable_is_one_line_before_any_folder(world, tmp_path,
                                                                                            command, case):
    flags, flag, words = TRACKING_PLACES[case]
    flags = [f.format(data=world["data"], run=world["run"], root=world["root"]) for f in flags]
    grid = ["--grid", "lr=1e-3"] if command == "sweep" else []
    before = {name: digests(world[name]) for name in ("data", "run")}
    result = facetl_logged(tmp_path / "log", command, "--data", str(world["data"]), *TINY, *grid, *flags, "--out",
                           str(tmp_path / "out"), "--cache-dir", str(world["cache"]))
    one_line_error(result, flag, words)
    assert not (tmp_path / "out").exists(), "a refused command made its output folder"
    assert before == {name: digests(world[name]) for name in ("data", "run")}


# --- item 3: a copied or moved run, resumed, keeps its tracking to itself ------------------------------------------

@pytest.mark.slow  # two tracked trainings each; make test-all
@pytest.mark.parametrize("how", ["copy", "move"])
def test_resuming_a_copied_or_moved_run_leaves_the_originals_records_alone(world, tmp_path, how):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    original, elsewhere = tmp_path / "runs" / "a", tmp_path / "elsewhere" / "a"
    result = facetl_logged(tmp_path / "train.log", "train", "--data", str(world["data"]), *TINY, "--out",
                           str(original), "--track", "tensorboard,mlflow", "--cache-dir", str(world["cache"]))
    assert result.returncode == 0, result.stderr
    elsewhere.parent.mkdir()
    if how == "copy":
        shutil.copytree(original, elsewhere, symlinks=True)  # cp -r
    else:
        shutil.move(original, elsewhere)  # mv
    before = digests(tmp_path / "runs")
    result = facetl_logged(tmp_path / "resume.log", "train", "--resume", str(elsewhere), "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert digests(tmp_path / "runs") == before, "resuming the copy wrote into the original's folder"
    assert "copied or moved" in result.stderr  # said once: the artifacts' folder was the original's
    # the copy's own records go on from its epoch 1: one MLflow run with epochs 1 and 2, events of both
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client = MlflowClient(f"sqlite:///{elsewhere / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("facetl").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2]
    events = EventAccumulator(str(elsewhere))
    events.Reload()
    assert [s.step for s in events.Scalars("val/loss")] == [1, 2]


# --- item 5: runs --out inside a run; item 12: sweep --out onto a run ---------------------------------------------

def test_runs_out_inside_a_run_folder_is_refused_even_with_overwrite(world, tmp_path):
    before = digests(world["run"])
    result = facetl_logged(tmp_path / "log", "runs", str(world["run"].parent), "--out",
                           str(world["run"] / "report.md"), "--overwrite")
    one_line_error(result, "--out", "inside the run folder")
    assert digests(world["run"]) == before
    table = world["run"].parent / "table.md"  # beside the runs is where a table belongs
    assert facetl_logged(tmp_path / "log", "runs", str(world["run"].parent), "--out", str(table)).returncode == 0
    assert "| a |" in table.read_text()
    table.unlink()


@pytest.mark.parametrize("inside", [False, True])
def test_sweep_out_onto_or_inside_a_run_folder_is_refused(world, tmp_path, inside):
    out = world["run"] / "sweep" if inside else world["run"]
    before = digests(world["run"])
    result = facetl_logged(tmp_path / "log", "sweep", "--data", str(world["data"]), *TINY, "--grid", "lr=1e-3",
                           "--out", str(out), "--cache-dir", str(world["cache"]))
    one_line_error(result, "--out", "inside the run folder" if inside else "is the run folder")
    assert digests(world["run"]) == before


# --- item 22: evaluate on a read-only run ------------------------------------------------------------------------

def read_only(folder: Path) -> tuple[str, ...]:
    """A command prefix under which `folder` is read-only, even to root (a read-only bind mount in a mount
    namespace of its own), or a skip that says why none is possible here."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount; as another user, chmod -w is the same test")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && "
                            f"mount -o remount,ro,bind '{folder}' && ! touch '{folder}/.probe'"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {probe.stderr.strip()[:200]}")
    script = f"mount --bind '{folder}' '{folder}' && mount -o remount,ro,bind '{folder}' && exec \"$@\""
    return ("unshare", "-m", "sh", "-c", script, "sh")


def test_evaluate_on_a_read_only_run_is_one_line_before_the_work(world, tmp_path):
    before = digests(world["run"])
    result = facetl_logged(tmp_path / "log", "evaluate", str(world["run"]), "--device", "cpu",
                           prefix=read_only(world["run"]))
    line = one_line_error(result, str(world["run"]), "not writable")
    assert "complete" not in result.stderr and "report" not in line
    assert digests(world["run"]) == before


# --- item 23: tune's message names the --out the user gave -----------------------------------------------------------

def test_tune_out_inside_the_data_names_the_given_out(world, tmp_path):
    pytest.importorskip("optuna")
    out = world["data"] / "positives" / "tu"
    result = facetl_logged(tmp_path / "log", "tune", "--data", str(world["data"]), *TINY, "--space",
                           "lr=log:1e-4:1e-2", "--trials", "1", "--out", str(out), "--cache-dir", str(world["cache"]))
    line = one_line_error(result, f"--out {out}", "inside the data folder")
    assert "default" not in line
    assert not out.exists()
