"""`facetl faces` and `facetl predict` against data that names places it should not: table rows that are
absolute or climb out with `..`, symbolic links, two photos whose outputs would share a name, a named pipe
among the photos, an output folder inside the input, and an interrupt halfway. Whatever the data says,
the user's files are byte-for-byte the same afterwards and every file written is under the output the
command was given (the snapshots below hash the whole temporary tree before and after).
"""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from commandline import ENV, in_process, one_line_error
from facetl.cli import main

OWN_FILES = {"faces.csv", "faces.png", "faces.json"}


@pytest.fixture(scope="module")
def face_photo() -> Image.Image:
    """The astronaut portrait at 160 px: MTCNN finds its one face (about 27 px) in some 40 ms."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((160, 160), Image.BILINEAR)


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory) -> Path:
    """A tiny run trained on random crops: enough for predict to answer and to box faces with --faces detect."""
    root = tmp_path_factory.mktemp("crop-run")
    rng = np.random.default_rng(0)
    for name in ("no", "yes"):
        (root / "data" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "data" / name / f"{i}.png")
    assert main(["train", "--data", str(root / "data"), "--weights", "none", "--img-size", "32", "--strategy",
                 "full", "--epochs", "1", "--out", str(root / "run"), "--cache-dir", str(root / "cache")]) == 0
    return root / "run"


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every entry under root (outside `skip`) -> a hash of its bytes, or what a link points at; pipes and
    other special files by kind, never opened."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if any(path == s or s in path.parents for s in skip):
                continue
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[key] = "link:" + os.readlink(path)
            elif path.is_file():
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif not path.is_dir():
                found[key] = "special"
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def crop_files(out: Path) -> list[str]:
    """Every file in OUT but its own files at the top (faces.*, the copied table)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not (
        p.parent == out and (p.name in OWN_FILES or p.suffix == ".csv")))


def faces_rows(out: Path) -> list[dict]:
    with open(out / "faces.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def printed_count(stdout: str, words: str) -> int:
    """The number in front of `words` in the command's output ("4 face crops", "annotated 2 photo(s)")."""
    line = next(line for line in stdout.splitlines() if words in line)
    before, _, after = line.partition(words)
    return int(before.split()[-1]) if before.split() and before.split()[-1].isdigit() else int(after.split()[0])


# 1. Table rows that point outside --images: read where they point, cropped only inside --out


def test_faces_never_writes_a_crop_over_a_photo_a_table_row_names_outside_out(tmp_path, face_photo, capsys):
    home = tmp_path / "home" / "u" / "photos"
    images = tmp_path / "data" / "deep" / "images"
    for folder in (home, images, tmp_path / "data" / "x"):
        folder.mkdir(parents=True)
    face_photo.save(home / "a.jpg")
    face_photo.rotate(8).save(tmp_path / "data" / "x" / "p.jpg")
    face_photo.rotate(-8).save(images / "ok.jpg")
    table = tmp_path / "data" / "attrs.csv"
    table.write_text(f"filename,Smiling\n{home / 'a.jpg'},1\n../../x/p.jpg,-1\nok.jpg,1\n")
    out = tmp_path / "crops"
    before = snapshot(tmp_path)

    result = in_process(capsys, "faces", str(table), "--images", str(images), "--target", "Smiling",
                        "--out", str(out), "--size", "32")

    assert result.returncode == 0, result.stderr
    assert changed(before, snapshot(tmp_path, skip=(out,))) == []  # the photos themselves untouched
    crops = crop_files(out)
    assert len(crops) == 3 == printed_count(result.stdout, "face crops")
    with open(out / "attrs.csv", newline="") as f:  # the crops' table names them inside OUT, where they are
        named = [row["filename"] for row in csv.DictReader(f)]
    assert sorted(named) == crops and all((out / n).resolve().is_relative_to(out.resolve()) for n in named)
    assert {r["source"] for r in faces_rows(out)} == {str(home / "a.jpg"), "../../x/p.jpg", "ok.jpg"}


# 2. Two photos whose outputs shared a name: distinct outputs, and the count printed is the count written


def test_faces_gives_photos_that_differ_only_in_extension_a_crop_each(tmp_path, face_photo, capsys):
    data = tmp_path / "photos"
    for name in ("A", "B"):
        (data / name).mkdir(parents=True)
    face_photo.save(data / "A" / "x.png")
    face_photo.rotate(10).save(data / "A" / "x.gif")
    face_photo.rotate(-10).save(data / "B" / "y.jpg")
    face_photo.rotate(5).save(data / "B" / "y.bmp")
    out = tmp_path / "crops"

    result = in_process(capsys, "faces", str(data), "--out", str(out), "--size", "32")

    assert result.returncode == 0, result.stderr
    crops = crop_files(out)
    assert len(crops) == 4 == printed_count(result.stdout, "face crops")
    used = {r["source"]: r["crop"] for r in faces_rows(out) if r["status"] == "used"}
    assert sorted(used) == ["A/x.gif", "A/x.png", "B/y.bmp", "B/y.jpg"]  # each row names its own photo
    assert sorted(used.values()) == crops  # and its own crop
    gif, png = (np.asarray(Image.open(out / used[f"A/x.{ext}"])) for ext in ("gif", "png"))
    assert not np.array_equal(gif, png)


def test_predict_annotates_photos_of_one_name_in_two_folders_apart(tmp_path, crop_run, face_photo, capsys):
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        (photos / name).mkdir(parents=True)
    face_photo.save(photos / "a" / "x.jpg")
    face_photo.transpose(Image.FLIP_LEFT_RIGHT).rotate(15).save(photos / "b" / "x.jpg")
    face_photo.rotate(-15).save(photos / "a" / "x.png")
    seen = tmp_path / "seen"

    for overwrite in ([], ["--overwrite"]):
        result = in_process(capsys, "predict", str(crop_run), str(photos), "--faces", "detect",
                            "--annotate", str(seen), *overwrite)
        assert result.returncode == 0, result.stderr
        written = sorted(p for p in seen.rglob("*") if p.is_file())
        assert len(written) == 3 == printed_count(result.stdout, "photo(s)")
        assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in written}) == 3  # three different pictures


# 9. A named pipe among the photos: skipped with a warning, never waited on


@pytest.fixture
def folder_with_a_pipe(tmp_path, face_photo) -> Path:
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        (photos / name).mkdir(parents=True)
        face_photo.save(photos / name / "real.jpg")
    os.mkfifo(photos / "a" / "pipe.jpg")
    return photos


def test_faces_skips_a_named_pipe_instead_of_hanging(folder_with_a_pipe, tmp_path):
    out = tmp_path / "crops"
    result = subprocess.run([sys.executable, "-m", "facetl", "faces", str(folder_with_a_pipe), "--out", str(out),
                             "--size", "32"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warning: 1 photo(s) could not be read" in result.stderr
    assert crop_files(out) == ["a/real.jpg", "b/real.jpg"]
    pipe = next(r for r in faces_rows(out) if r["source"] == "a/pipe.jpg")
    assert pipe["status"] == "unreadable: not a regular file (a named pipe)"


def test_predict_skips_a_named_pipe_instead_of_hanging(folder_with_a_pipe, crop_run):
    for faces in ("detect", "none"):  # through the face detector and through the whole-image path
        result = subprocess.run([sys.executable, "-m", "facetl", "predict", str(crop_run), str(folder_with_a_pipe),
                                 "--faces", faces], capture_output=True, text=True, env=ENV, timeout=120)
        assert result.returncode == 1, result.stderr  # 1: some input was skipped
        assert f"warning: skipped {folder_with_a_pipe / 'a' / 'pipe.jpg'}: not a regular file" in result.stderr
        assert result.stdout.count("real.jpg") == 2 and "Traceback" not in result.stderr


# 13. An interrupt halfway: the message fits the command, and the same command finishes the job


def test_faces_interrupted_then_rerun_finishes_without_mixing_or_escaping(tmp_path, face_photo, capsys):
    photos = tmp_path / "photos"
    # c last and long (batches of 16): on an idle machine 48 photos once finished before the signal arrived
    for name, count in (("a", 20), ("b", 20), ("c", 120)):
        (photos / name).mkdir(parents=True)
        for i in range(count):
            face_photo.rotate(i % 21 - 10).save(photos / name / f"{i:03d}.jpg")
    out = tmp_path / "crops"
    command = ["faces", str(photos), "--out", str(out), "--size", "32"]
    # SIGINT as a terminal's Ctrl-C leaves it: a process inherits an ignored SIGINT, and a pytest-xdist worker
    # may have come to ignore it (the child then finished its job and exited 0 under `make test`)
    started = subprocess.Popen([sys.executable, "-m", "facetl", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not any(out.glob("a/*.jpg")) and started.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    started.send_signal(signal.SIGINT)
    _, stderr = started.communicate(timeout=120)
    assert started.returncode == 130, stderr
    assert "facetl faces: interrupted" in stderr and "epochs" not in stderr and "Traceback" not in stderr
    assert not (out / "faces.csv").exists() and not (out / "c").exists()  # it really stopped halfway
    photos_before = snapshot(photos)

    # other settings into the unfinished folder: refused, nothing of it changed
    unfinished = snapshot(out)
    one_line_error(in_process(capsys, "faces", str(photos), "--out", str(out), "--size", "48"), "unfinished", "size")
    assert snapshot(out) == unfinished

    # a link planted in OUT towards the photos: the crop that would go through it is refused, not written
    (out / "c").symlink_to(photos / "c", target_is_directory=True)
    one_line_error(in_process(capsys, *command), "outside")
    assert snapshot(photos) == photos_before
    (out / "c").unlink()

    result = in_process(capsys, *command)
    assert result.returncode == 0, result.stderr
    assert snapshot(photos) == photos_before
    rows = faces_rows(out)
    used = [r["source"] for r in rows if r["status"] == "used"]
    assert sorted(used) == sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))  # each once
    assert len(crop_files(out)) == 160 == printed_count(result.stdout, "face crops")
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", *sorted(OWN_FILES)]  # no progress files left
    one_line_error(in_process(capsys, *command), "not empty")  # a finished folder is not redone


# 5. --annotate inside an input folder: refused before anything is written


def test_predict_refuses_an_annotate_folder_inside_its_input_folder(tmp_path, crop_run, face_photo, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    face_photo.save(photos / "a.jpg")
    before = snapshot(tmp_path)
    for folder in (photos / "annotated", photos):
        result = in_process(capsys, "predict", str(crop_run), str(photos), "--annotate", str(folder))
        one_line_error(result, "--annotate", "inside the input folder")
        assert snapshot(tmp_path) == before


# The property: whatever paths the data holds, only files under the command's output change


PARTS = ("a", "b", "A", "_up", "_root", "faces")
EXTENSIONS = (".jpg", ".png", ".gif", ".JPG")


@st.composite
def hostile_rows(draw) -> list[tuple[str, str]]:
    """Table rows as (kind, relative name): kind says where the row points."""
    kinds = st.sampled_from(["plain", "absolute", "up", "middle-up", "linked", "reserved"])
    names = st.tuples(st.sampled_from(PARTS), st.sampled_from(EXTENSIONS)).map("".join)
    return draw(st.lists(st.tuples(kinds, names), min_size=1, max_size=4))


def _hostile_table(base: Path, rows: list[tuple[str, str]], photo: Image.Image) -> tuple[Path, Path]:
    """A table in base/data, images in base/data/deep/images, its rows pointing in, out, up and through a link."""
    images = base / "data" / "deep" / "images"
    (base / "elsewhere").mkdir(parents=True)
    images.mkdir(parents=True)
    (images / "linked").symlink_to(base / "elsewhere", target_is_directory=True)
    lines, angle = ["filename,Smiling", "one.jpg,1", "two.jpg,-1"], 0
    for name in ("one.jpg", "two.jpg"):
        photo.save(images / name)
    for kind, name in rows:
        row = {"plain": name, "absolute": str(base / "abs" / name), "up": f"../../{name}",
               "middle-up": f"sub/../{name}", "linked": f"linked/{name}",
               "reserved": "faces.png"}[kind]
        target = (images / row) if not os.path.isabs(row) else Path(row)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            angle += 7
            photo.rotate(angle).save(target, format="PNG" if target.suffix.lower() == ".gif" else None)
        lines.append(f"{row},{1 if angle % 2 else -1}")
    table = base / "data" / "attrs.csv"
    table.write_text("\n".join(lines) + "\n")
    return table, images


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=hostile_rows())
def test_faces_writes_only_inside_out_whatever_the_table_names(rows, face_photo, capsys):
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        table, images = _hostile_table(base, rows, face_photo)
        out = base / "out"
        before = snapshot(base)
        result = in_process(capsys, "faces", str(table), "--images", str(images), "--target", "Smiling",
                            "--out", str(out), "--size", "32")
        assert result.returncode == 0, result.stderr
        assert changed(before, snapshot(base, skip=(out,))) == []
        crops = crop_files(out)
        assert len(crops) == printed_count(result.stdout, "face crops")
        used = [r["crop"] for r in faces_rows(out) if r["status"] == "used"]
        assert sorted(used) == crops and len(set(c.casefold() for c in crops)) == len(crops)


def test_folders_links_and_collisions_change_nothing_outside_the_outputs(tmp_path, crop_run, face_photo, capsys):
    photos, elsewhere, loose = tmp_path / "photos", tmp_path / "elsewhere", tmp_path / "loose"
    for folder in (photos / "a", photos / "b", elsewhere, loose):
        folder.mkdir(parents=True)
    face_photo.save(photos / "a" / "x.jpg")
    face_photo.rotate(9).save(photos / "a" / "x.gif")
    face_photo.rotate(-9).save(photos / "b" / "x.jpg")
    face_photo.rotate(4).save(elsewhere / "x.jpg")
    face_photo.rotate(-4).save(loose / "x.jpg")
    (photos / "linked").symlink_to(elsewhere, target_is_directory=True)  # a class folder that lives elsewhere
    (photos / "b" / "alias.jpg").symlink_to(loose / "x.jpg")
    crops, seen, preds = tmp_path / "crops", tmp_path / "seen", tmp_path / "preds.csv"
    run_before = snapshot(crop_run)
    before = snapshot(tmp_path)

    result = in_process(capsys, "faces", str(photos), "--out", str(crops), "--size", "32")
    assert result.returncode == 0, result.stderr
    assert len(crop_files(crops)) == 5 == printed_count(result.stdout, "face crops")
    for overwrite in ([], ["--overwrite"]):
        result = in_process(capsys, "predict", str(crop_run), str(photos), str(loose / "x.jpg"), "--faces", "detect",
                            "--out", str(preds), "--annotate", str(seen), *overwrite)
        assert result.returncode == 0, result.stderr
        with open(preds, newline="") as f:
            photos_read = {row["path"] for row in csv.DictReader(f)}
        assert str(loose / "x.jpg") in photos_read and str(photos / "a" / "x.gif") in photos_read
        written = [p for p in seen.rglob("*") if p.is_file()]
        assert len(written) == len(photos_read) == printed_count(result.stdout, "photo(s)")

    assert changed(before, snapshot(tmp_path, skip=(crops, seen, preds))) == []
    assert snapshot(crop_run) == run_before
