"""Runs that can be trusted: training survives its output, run files others can read, resuming says what
it does, and numbers out of range are refused before any work, in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from commandline import ENV
from facetl.cli import main

TINY = ["--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1"]


def test_a_closed_stdout_does_not_stop_training(tiny_folder_dataset, tmp_path):
    run = tmp_path / "run"
    command = (f"{sys.executable} -m facetl train --data {tiny_folder_dataset} {' '.join(TINY)} --epochs 2 "
               f"--out {run} | head -1")
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600, env=ENV)
    assert len(done.stdout.splitlines()) == 1
    assert (run / "metrics.json").is_file(), done.stderr
    assert "epoch   2/2" in (run / "train.log").read_text()  # the log keeps what stdout could not take


def test_run_files_honour_the_umask_and_resume_says_what_it_does(tiny_folder_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["train", "--data", str(tiny_folder_dataset), *TINY, "--out", str(run)]) == 0
    finally:
        os.umask(old)
    for name in ("metrics.json", "best.pt", "report.md", "config.yaml", "split.csv"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "is finished (1 of 1 epochs)" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # extends the finished run
    assert len((run / "history.csv").read_text().splitlines()) == 3
    assert "epochs: 2" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("flags, fragment", [
    (["--lr", "nan"], "lr: nan is out of range"),
    (["--lr", "inf"], "lr: inf is out of range"),
    (["--img-size", "100000"], "img_size: 100000 is out of range"),
    (["--cache-views", "100000"], "cache_views: 100000 is out of range"),
    (["--batch-size", "0"], "batch_size: 0 is out of range"),
    (["--split", "0.8,0.1,nan"], "finite"),
    (["--backbone", "vgg16", "--img-size", "16"], "needs at least 32 pixels"),
])
def test_numbers_out_of_range_are_one_line(tiny_folder_dataset, tmp_path, flags, fragment, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder_dataset), "--weights", "none", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before a run folder was made


def store_file(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "images").iterdir() if ".building-" not in p.name]
    return entry / "images.u8"


def test_a_zeroed_or_truncated_store_is_found_and_rebuilt(tiny_folder_dataset, tmp_path):
    from facetl.data.load import load_samples
    from facetl.data.store import open_image_store

    files = load_samples(str(tiny_folder_dataset)).files()
    cache = tmp_path / "cache"
    first = open_image_store(files, 16, cache, workers=1, progress=False)
    good = first.images.copy()
    del first
    path = store_file(cache)
    path.write_bytes(bytes(path.stat().st_size))  # zeroed, same size: trained on blank images before
    with pytest.warns(UserWarning, match="damaged.*checksum"):
        again = open_image_store(files, 16, cache, workers=1, progress=False)
    assert (again.images == good).all()
    del again
    path = store_file(cache)
    path.write_bytes(path.read_bytes()[:1000])  # truncated: a traceback on every run before
    with pytest.warns(UserWarning, match="damaged.*bytes"):
        again = open_image_store(files, 16, cache, workers=1, progress=False)
    assert (again.images == good).all()


def test_stale_building_folders_are_removed_and_not_listed(tiny_folder_dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache / "images" / f"abc.building-{dead.stdout.strip()}-xyz"
    stale.mkdir(parents=True)
    (stale / "images.u8").write_bytes(b"0" * 1000)
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert "0 entries" in capsys.readouterr().out and not stale.exists()


def test_a_run_moved_with_its_data_evaluates_from_anywhere(tmp_path, capsys, monkeypatch, make_image):
    home = tmp_path / "project"
    for c in ("a", "b"):
        for i in range(10):
            make_image(home / "data" / c / f"{i}.png", 16, seed=10 * ord(c) + i)
    monkeypatch.chdir(home)
    assert main(["train", "--data", "data", *TINY, "--out", "runs/r"]) == 0  # relative paths, as typed
    moved = tmp_path / "elsewhere"
    (home).rename(moved)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(moved / "runs" / "r")]) == 0
    capsys.readouterr()
    # data gone: the message names every path it tried
    (moved / "data").rename(tmp_path / "gone")
    assert main(["evaluate", str(moved / "runs" / "r")]) == 2
    err = capsys.readouterr().err
    assert str(home / "data") in err and str(moved / "runs" / "r" / ".." / ".." / "data") in err
    assert main(["evaluate", str(moved / "runs" / "r"), "--data", str(tmp_path / "gone")]) == 0
