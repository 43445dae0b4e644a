"""Person-safe splits (--split-by) and K-fold cross-validation (--folds), on real faces.

celebrity_faces_attributes.csv gives 24 people with a constant gender each: a split that shares people
between train and test measures memorised faces. A small copy (a few images per person) keeps it quick.
"""
from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from commandline import in_process, one_line_error
from facetl.cli import main
from facetl.config import build_config
from facetl.data.load import load_samples
from facetl.data.split import load_split, make_folds, make_split, save_split
from facetl.errors import FacetlError

PER_PERSON = 5
TINY = ["--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--batch-size", "16",
        "--precise-bn", "off"]


@pytest.fixture(scope="module")
def celebs(tmp_path_factory) -> dict[str, Path]:
    """A table of the first PER_PERSON images of each of the 24 people, with the images copied."""
    from conftest import SHARED_DATASETS

    table = SHARED_DATASETS / "celebrity_faces_attributes.csv"
    if not table.is_file():
        pytest.skip(f"{table} not found (see shared/datasets/README.md)")
    root = tmp_path_factory.mktemp("celebs")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    taken: dict[str, int] = defaultdict(int)
    kept = []
    for row in rows:
        if taken[row["identity"]] < PER_PERSON:
            taken[row["identity"]] += 1
            kept.append(row)
            target = root / "images" / row["filename"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SHARED_DATASETS / "celebrity_faces" / row["filename"], target)
    small = root / "attrs.csv"
    with open(small, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["filename", "identity", "Male", "source"])
        writer.writeheader()
        writer.writerows({**row, "source": "glint360k"} for row in kept)
    return {"table": small, "images": root / "images", "root": root}


def load(celebs, group="identity"):
    return load_samples(str(celebs["table"]), str(celebs["images"]), "Male", group=group)


def people_per_split(samples, assignment) -> dict[str, set]:
    seen = defaultdict(set)
    for path, split in zip(samples.paths, assignment):
        seen[path.split("/")[0]].add(split)
    return seen


def test_the_table_gives_every_file_its_person(celebs):
    samples = load(celebs)
    assert len(samples) == 24 * PER_PERSON and len(set(samples.groups)) == 24
    assert all(p.startswith(g + "/") for p, g in zip(samples.paths, samples.groups))
    assert load(celebs, None).groups is None


def test_split_by_identity_keeps_people_whole_and_without_it_they_are_shared(celebs):
    samples = load(celebs)
    hashes = [""] * len(samples)
    for seed in range(3):
        a = make_split(samples, hashes, [0.8, 0.1, 0.1], seed)
        assert set(a) == {"train", "val", "test"}
        assert all(len(s) == 1 for s in people_per_split(samples, a).values())
        for split in ("val", "test"):  # stratified as far as groups allow: both genders where they fit
            assert len(np.unique(samples.labels[a == split])) == 2
    shared = make_split(load(celebs, None), hashes, [0.8, 0.1, 0.1], 0)  # the trap
    assert sum(len(s) > 1 for s in people_per_split(samples, shared).values()) >= 10


def test_identical_files_still_share_a_split_across_people(celebs):
    samples = load(celebs)
    hashes = [f"h{i}" for i in range(len(samples))]
    hashes[0] = hashes[-1]  # the same photo filed under two people joins them
    a = make_split(samples, hashes, [0.8, 0.1, 0.1], 0)
    assert a[0] == a[-1]


def test_path_regex_groups_and_refusals(celebs, tiny_folder_dataset):
    by_path = load(celebs, "path:^([^/]+)/")
    assert by_path.groups == load(celebs).groups
    with pytest.raises(FacetlError, match="no group found"):
        load(celebs, "path:^(Nobody)/")
    with pytest.raises(FacetlError, match="class folders"):
        load_samples(str(tiny_folder_dataset), group="identity")
    assert set(load_samples(str(tiny_folder_dataset), group="path:^([^/]+)/").groups) == {"no_smile", "smile"}
    with pytest.raises(FacetlError, match="needs a capture group"):
        build_config({"data": "x", "split_by": "path:abc"}).check()


def test_split_csv_keeps_its_first_columns_and_adds_group(celebs, tmp_path):
    samples = load(celebs)
    a = make_split(samples, [""] * len(samples), [0.8, 0.1, 0.1], 0)
    save_split(tmp_path / "split.csv", samples, a)
    assert (tmp_path / "split.csv").read_text().splitlines()[0] == "path,label,split,group"
    again, b = load_split(tmp_path / "split.csv", samples.root, samples.class_names)
    assert again.groups == samples.groups and (a == b).all()


def test_folds_test_every_image_once_and_keep_people_whole(celebs):
    for group in ("identity", None):
        samples = load(celebs, group)
        folds = make_folds(samples, [""] * len(samples), 3, 1 / 9, seed=0)
        tests = np.stack([f == "test" for f in folds])
        assert (tests.sum(axis=0) == 1).all()
        for f in folds:
            assert set(f) == {"train", "val", "test"}
            if group:
                assert all(len(s) == 1 for s in people_per_split(samples, f).values())
        again = make_folds(samples, [""] * len(samples), 3, 1 / 9, seed=0)
        assert all((x == y).all() for x, y in zip(folds, again))


def test_train_folds_split_by_identity_end_to_end(celebs, tmp_path, capsys):
    data = ["--data", str(celebs["table"]), "--images", str(celebs["images"]), "--target", "Male"]
    out = tmp_path / "folds"
    assert main(["train", *data, *TINY, "--split-by", "identity", "--folds", "3", "--out", str(out)]) == 0
    assert "mean ± std" in capsys.readouterr().out
    tested = []
    for k in (1, 2, 3):
        fold = out / f"fold-{k}"
        for name in ("split.csv", "split.json", "config.yaml", "report.md", "metrics.json", "best.pt"):
            assert (fold / name).is_file(), fold / name
        with open(fold / "split.csv", newline="") as f:
            split = list(csv.DictReader(f))
        assert list(split[0]) == ["path", "label", "split", "group"]
        tested += [r["path"] for r in split if r["split"] == "test"]
        people = defaultdict(set)
        for r in split:
            people[r["group"]].add(r["split"])
        assert all(len(s) == 1 for s in people.values())
        assert "split by identity: train " in (fold / "train.log").read_text()
        assert "folds: null" in (fold / "config.yaml").read_text()
    assert sorted(tested) == sorted(load(celebs).paths)  # every image in exactly one fold's test split
    results = (out / "results.md").read_text()
    assert results.count("| fold-") == 3 and "**mean ± std**" in results
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["fold-1", "fold-2", "fold-3", "mean", "std"]
    assert abs(float(table[3]["accuracy"]) - np.mean([float(r["accuracy"]) for r in table[:3]])) < 1e-9
    assert main(["evaluate", str(out / "fold-2")]) == 0  # a fold is an ordinary run, group column and all
    # rerunning finishes nothing twice
    assert main(["train", *data, *TINY, "--split-by", "identity", "--folds", "3", "--out", str(out)]) == 0
    assert "finished earlier" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needles", [
    (["--split-by", "person"], ["--split-by column 'person' not found", "identity"]),
    (["--split-by", "source"], ["--split-by source", "one group 'glint360k'"]),
    (["--split-by", "Male"], ["too few groups to split: 2 group(s)"]),
    (["--folds", "1"], ["folds: 1 is out of range"]),
    (["--folds", "30", "--split-by", "identity"], ["too few groups for 30 folds"]),
    (["--split-by", "path:("], ["split_by", "not a regular expression"]),
])
def test_bad_values_are_one_line(celebs, tmp_path, capsys, extra, needles):
    args = ["train", "--data", str(celebs["table"]), "--images", str(celebs["images"]), "--target", "Male",
            *TINY, *extra, "--out", str(tmp_path / "new")]
    one_line_error(in_process(capsys, *args), *needles)
    assert not (tmp_path / "new").exists()


def test_split_by_on_class_folders_is_one_line(tiny_folder_dataset, tmp_path, capsys):
    one_line_error(in_process(capsys, "train", "--data", str(tiny_folder_dataset), *TINY, "--split-by", "identity",
                              "--out", str(tmp_path / "new")), "--split-by identity", "class folders")
    assert not (tmp_path / "new").exists()
