"""Class folders, --positive, the seeded stratified split and the duplicate-file policy."""
from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facetl.data.load import load_samples
from facetl.data.samples import Samples, stratified_limit
from facetl.data.split import apply_duplicate_policy, conflicting_groups, load_split, make_split, save_split
from facetl.data.store import open_image_store
from facetl.errors import FacetlError

SPLIT = [0.8, 0.1, 0.1]


def sha1s(samples: Samples) -> list[str]:
    return [hashlib.sha1(f.read_bytes()).hexdigest() for f in samples.files()]


def fake_samples(labels, names=None) -> Samples:
    labels = np.asarray(labels, dtype=np.int64)
    names = names or [f"class{c}" for c in range(labels.max() + 1)]
    return Samples(Path("."), [f"{i}.jpg" for i in range(len(labels))], labels, names)


# ---------------------------------------------------------------- class folders


def test_tiny_folder_dataset_reads_as_two_classes(tiny_folder_dataset):
    samples = load_samples(str(tiny_folder_dataset))
    assert samples.class_names == ["no_smile", "smile"]
    assert samples.counts() == {"no_smile": 10, "smile": 10}
    assert all(f.is_file() for f in samples.files())
    for path, label in zip(samples.paths, samples.labels):
        assert Path(path).parts[0] == samples.class_names[label]


def test_images_are_found_recursively_and_other_files_ignored(tmp_path, make_image):
    make_image(tmp_path / "a" / "deep" / "er" / "1.PNG", 8, fmt="PNG")
    make_image(tmp_path / "a" / "2.jpeg", 8)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    make_image(tmp_path / "a" / ".hidden.jpg", 8)
    make_image(tmp_path / "a" / ".thumbs" / "3.jpg", 8)
    make_image(tmp_path / "b" / "4.jpg", 8)
    make_image(tmp_path / ".ipynb_checkpoints" / "5.jpg", 8)
    samples = load_samples(str(tmp_path))
    assert samples.class_names == ["a", "b"]
    assert sorted(samples.paths) == ["a/2.jpeg", "a/deep/er/1.PNG", "b/4.jpg"]


@pytest.mark.parametrize("classes", [[], ["only"]])
def test_fewer_than_two_classes_is_refused(tmp_path, make_image, classes):
    for name in classes:
        make_image(tmp_path / name / "1.jpg", 8)
    make_image(tmp_path / "loose.jpg", 8)
    with pytest.raises(FacetlError, match=f"has {len(classes)} class folder"):
        load_samples(str(tmp_path))


def test_empty_class_folder_is_named(tiny_folder_dataset):
    (tiny_folder_dataset / "frown").mkdir()
    (tiny_folder_dataset / "frown" / "readme.txt").write_text("images go here")
    with pytest.raises(FacetlError, match="frown contains no images"):
        load_samples(str(tiny_folder_dataset))


def test_missing_data_and_target_on_a_folder_are_refused(tiny_folder_dataset):
    with pytest.raises(FacetlError, match="data not found"):
        load_samples(str(tiny_folder_dataset / "nope"))
    with pytest.raises(FacetlError, match="--target"):
        load_samples(str(tiny_folder_dataset), target="Smiling")


def test_class_names_with_spaces_and_non_ascii(tmp_path, make_image):
    names = ["Robert Downey Jr", "Zoë Saldaña", "李 小龙"]
    for c, name in enumerate(names):
        for i in range(2):
            make_image(tmp_path / name / f"photo {i} é.jpg", 8, seed=10 * c + i)
    samples = load_samples(str(tmp_path))
    assert samples.class_names == sorted(names)
    assert samples.counts() == {name: 2 for name in names}
    assert all(f.is_file() for f in samples.files())
    assert {samples.class_names[label] for label in samples.labels} == set(names)


def test_real_celebrity_faces_folders(shared_path):
    samples = load_samples(str(shared_path("celebrity_faces")))
    counts = samples.counts()
    assert len(counts) == 24 and "Robert Downey Jr" in counts
    assert sum(counts.values()) == 10240
    assert (min(counts.values()), max(counts.values())) == (22, 936)


def test_real_smilesmiled_folders(shared_path):
    samples = load_samples(str(shared_path("SMILEsmileD/SMILEs")), positive="positives")
    assert samples.class_names == ["negatives", "positives"]
    assert samples.counts() == {"negatives": 9475, "positives": 3690}


# ---------------------------------------------------------------- --positive


def test_positive_puts_that_class_last_and_keeps_every_file_in_its_class(tiny_folder_dataset):
    plain = load_samples(str(tiny_folder_dataset))
    swapped = load_samples(str(tiny_folder_dataset), positive="no_smile")
    assert swapped.class_names == ["smile", "no_smile"]
    assert swapped.paths == plain.paths
    before = [plain.class_names[label] for label in plain.labels]
    after = [swapped.class_names[label] for label in swapped.labels]
    assert after == before
    assert load_samples(str(tiny_folder_dataset), positive="smile").class_names == ["no_smile", "smile"]


def test_positive_must_be_a_class_of_two(tiny_folder_dataset, make_image):
    with pytest.raises(FacetlError, match="'Smile' is not a class.*no_smile, smile"):
        load_samples(str(tiny_folder_dataset), positive="Smile")
    make_image(tiny_folder_dataset / "frown" / "1.jpg", 8)
    with pytest.raises(FacetlError, match="two-class"):
        load_samples(str(tiny_folder_dataset), positive="smile")


def test_stratified_limit_keeps_class_balance():
    samples = fake_samples([0] * 150 + [1] * 50)
    small = stratified_limit(samples, 40, seed=0)
    assert len(small) == 40 and small.counts() == {"class0": 30, "class1": 10}
    assert stratified_limit(samples, 40, seed=0).paths == small.paths
    assert stratified_limit(samples, 1000, seed=0) is samples


# ---------------------------------------------------------------- split


def test_split_is_stratified_complete_and_seeded():
    samples = fake_samples([0] * 160 + [1] * 40)
    hashes = [f"h{i}" for i in range(len(samples))]
    a = make_split(samples, hashes, SPLIT, seed=3)
    assert set(a) == {"train", "val", "test"}
    counts = Counter(zip(a, samples.labels.tolist()))
    assert counts == {("train", 0): 128, ("train", 1): 32, ("val", 0): 16, ("val", 1): 4,
                      ("test", 0): 16, ("test", 1): 4}
    assert (make_split(samples, hashes, SPLIT, seed=3) == a).all()
    assert not (make_split(samples, hashes, SPLIT, seed=4) == a).all()


def test_split_without_test_fraction():
    samples = fake_samples([0] * 30 + [1] * 30)
    a = make_split(samples, [""] * 60, [0.8, 0.2, 0.0], seed=0)
    assert Counter(a) == {"train": 48, "val": 12}


def test_identical_files_land_in_one_split(tmp_path, make_image):
    # 12 images copied twice more under other names: a random split would separate most copies
    for c, name in enumerate(("a", "b")):
        for i in range(6):
            original = make_image(tmp_path / name / f"{i}.jpg", 8, seed=10 * c + i)
            for k in range(2):
                shutil.copy(original, tmp_path / name / f"{i}_copy{k}.jpg")
        for i in range(20):
            make_image(tmp_path / name / f"single{i}.jpg", 8, seed=1000 + 100 * c + i)
    samples = load_samples(str(tmp_path))
    store = open_image_store(samples.files(), 8, tmp_path / "cache", workers=1, progress=False)
    assert len(set(store.hashes)) == len(samples) - 24
    for seed in range(3):
        a = make_split(samples, store.hashes, SPLIT, seed)
        by_hash: dict[str, set] = {}
        for digest, split in zip(store.hashes, a):
            by_hash.setdefault(digest, set()).add(split)
        assert all(len(s) == 1 for s in by_hash.values())


def test_split_saves_and_loads(tmp_path, tiny_folder_dataset):
    samples = load_samples(str(tiny_folder_dataset))
    a = make_split(samples, sha1s(samples), SPLIT, seed=0)
    save_split(tmp_path / "split.csv", samples, a)
    again, b = load_split(tmp_path / "split.csv", samples.root, samples.class_names)
    assert again.paths == samples.paths and (again.labels == samples.labels).all() and (a == b).all()
    with pytest.raises(FacetlError, match="smile"):
        load_split(tmp_path / "split.csv", samples.root, ["cat", "dog"])


@pytest.mark.parametrize("labels", [[0, 1], [0, 1, 1]])
def test_too_few_images_to_split_is_a_clear_error_or_a_split(labels):
    samples = fake_samples(labels)
    try:
        a = make_split(samples, [""] * len(labels), SPLIT, seed=0)
    except FacetlError as exc:
        assert "too few" in str(exc)
    else:
        assert set(a) <= {"train", "val", "test"} and "train" in set(a) and "val" in set(a)


@st.composite
def labelled_files(draw, duplicates: bool):
    counts = draw(st.lists(st.integers(3, 40), min_size=2, max_size=4))
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[draw(st.permutations(range(len(labels))))]
    hashes = [f"h{i}" for i in range(len(labels))]
    if duplicates:
        n = len(labels)
        for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=8)):
            hashes[b] = hashes[a]
    fractions = draw(st.sampled_from([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.7, 0.3, 0.0], [0.5, 0.25, 0.25]]))
    return labels, hashes, fractions, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None, database=None)
@given(labelled_files(duplicates=False))
def test_property_split_is_stratified_and_deterministic(case):
    labels, hashes, fractions, seed = case
    samples = fake_samples(labels)
    a = make_split(samples, hashes, fractions, seed)
    assert set(a) <= {"train", "val", "test"}  # every file in exactly one split
    assert (make_split(samples, hashes, fractions, seed) == a).all()
    for c in np.unique(labels):
        n_c = (labels == c).sum()
        for split, fraction in zip(("train", "val", "test"), fractions):
            assert abs(((a == split) & (labels == c)).sum() - n_c * fraction) <= 3


@settings(max_examples=30, deadline=None, database=None)
@given(labelled_files(duplicates=True))
def test_property_identical_files_never_cross_splits(case):
    labels, hashes, fractions, seed = case
    a = make_split(fake_samples(labels), hashes, fractions, seed)
    assert set(a) <= {"train", "val", "test"}
    seen: dict[str, str] = {}
    for digest, split in zip(hashes, a):
        assert seen.setdefault(digest, split) == split


# ---------------------------------------------------------------- duplicate policy


@pytest.fixture
def smile_style(tmp_path, make_image):
    """SMILEsmileD layout, 64x64 grey JPEGs; two positives also filed (same name, same bytes) as negatives,
    and one negative copied within negatives (a harmless duplicate)."""
    pos = tmp_path / "SMILEs" / "positives" / "positives7"
    neg = tmp_path / "SMILEs" / "negatives" / "negatives7"
    for i in range(8):
        make_image(pos / f"{i}.jpg", 64, seed=i, mode="L")
        make_image(neg / f"{100 + i}.jpg", 64, seed=100 + i, mode="L")
    for i in (2, 5):
        shutil.copy(pos / f"{i}.jpg", neg / f"{i}.jpg")
    shutil.copy(neg / "100.jpg", neg / "100 copy.jpg")
    samples = load_samples(str(tmp_path / "SMILEs"), positive="positives")
    store = open_image_store(samples.files(), 16, tmp_path / "cache", workers=1, progress=False)
    return samples, store.hashes


def conflicting_paths(samples, mask):
    return sorted(Path(p).name + "@" + Path(p).parts[0] for p, keep in zip(samples.paths, mask) if not keep)


def test_duplicates_drop_removes_every_conflicting_copy(smile_style):
    samples, hashes = smile_style
    keep, note = apply_duplicate_policy(samples, hashes, "drop")
    assert conflicting_paths(samples, keep) == ["2.jpg@negatives", "2.jpg@positives", "5.jpg@negatives",
                                                "5.jpg@positives"]
    assert "dropped 4 files in 2 groups" in note
    assert keep.sum() == len(samples) - 4  # the same-label copy of 100.jpg stays


def test_duplicates_keep_keeps_all_and_says_so(smile_style):
    samples, hashes = smile_style
    keep, note = apply_duplicate_policy(samples, hashes, "keep")
    assert keep.all() and "kept 4 files in 2 groups" in note


def test_duplicates_error_names_an_example(smile_style):
    samples, hashes = smile_style
    with pytest.raises(FacetlError, match=r"2 identical images.*(2|5)\.jpg.*--duplicates"):
        apply_duplicate_policy(samples, hashes, "error")


def test_no_conflicts_means_no_note(tiny_folder_dataset):
    samples = load_samples(str(tiny_folder_dataset))
    keep, note = apply_duplicate_policy(samples, sha1s(samples), "error")
    assert keep.all() and note == ""


def test_real_smilesmiled_conflicting_duplicates(shared_path):
    samples = load_samples(str(shared_path("SMILEsmileD/SMILEs")), positive="positives")
    hashes = sha1s(samples)
    groups = conflicting_groups(samples, hashes)
    assert groups, "SMILEsmileD files some identical images as both smiling and not smiling"
    keep, note = apply_duplicate_policy(samples, hashes, "drop")
    assert (~keep).sum() == sum(len(g) for g in groups)
    for g in groups:
        assert len({samples.class_names[samples.labels[i]] for i in g}) == 2 and not keep[g].any()
    with pytest.raises(FacetlError):
        apply_duplicate_policy(samples, hashes, "error")
