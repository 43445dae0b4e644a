"""Whole photos through the commands: `facetl faces`, training with --faces detect, and `facetl predict`
answering once per face, aligned exactly as training aligned (the record's FaceAlignment)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetl.cli import main
from facetl.data.faces.composite import background, match_faces, paste_faces
from facetl.preprocessing import FaceAlignment
from facetl.inference.run import load_run


def people_by_gender(root: Path) -> dict[str, list[Path]]:
    table = root.parent / "celebrity_faces_attributes.csv"
    if not table.is_file():
        pytest.skip(f"{table} not found (see shared/datasets/README.md)")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {gender: [root / r["filename"] for r in rows if r["Male"] == value][::97]
            for gender, value in (("man", "1"), ("woman", "-1"))}


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory, shared_datasets) -> Path:
    """Two class folders of 480x360 photos, each with one celebrity face pasted somewhere; one blank photo."""
    root = tmp_path_factory.mktemp("photos") / "gender"
    rng = np.random.default_rng(0)
    for gender, crops in people_by_gender(shared_datasets / "celebrity_faces").items():
        (root / gender).mkdir(parents=True)
        for i, crop_path in enumerate(crops[:16]):
            side = int(rng.integers(90, 160))
            x, y = rng.uniform(side, 480 - side), rng.uniform(side * 0.8, 360 - side * 0.8)
            crop = np.asarray(Image.open(crop_path).convert("RGB"))
            photo, _ = paste_faces(background(480, 360, seed=i), [crop], [(x, y, side, float(rng.uniform(-8, 8)))])
            Image.fromarray(photo).save(root / gender / f"{i:02d}.jpg", quality=92)
    Image.fromarray(background(480, 360, seed=99)).save(root / "woman" / "empty.jpg")
    return root


@pytest.fixture(scope="module")
def face_run(photo_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "faces"
    cache = tmp_path_factory.mktemp("cache")
    assert main(["train", "--data", str(photo_dataset), "--faces", "detect", "--weights", "none", "--img-size", "48",
                 "--epochs", "1", "--strategy", "full", "--out", str(out), "--cache-dir", str(cache)]) == 0
    return out


def test_training_from_whole_photos_lists_every_face_and_records_the_alignment(face_run):
    with open(face_run / "faces.csv", newline="") as f:
        faces = list(csv.DictReader(f))
    sources = {Path(r["source"]).parent.name + "/" + Path(r["source"]).name for r in faces}
    assert len(sources) == 33  # every photo has a row, with or without a face
    empty = [r for r in faces if r["source"].endswith("empty.jpg")]
    assert len(empty) == 1 and empty[0]["status"] == "no face"
    assert sum(r["status"] == "used" for r in faces) == 32
    skipped = (face_run / "skipped_images.csv").read_text()
    assert "empty.jpg" in skipped and "no face" in skipped
    record = load_run(face_run).record
    assert record.preprocessing.faces == FaceAlignment() and record.preprocessing.size == 48


def test_a_run_recorded_before_landmark_refinement_still_cuts_faces_as_it_was_trained(face_run, shared_datasets,
                                                                                      tmp_path):
    import shutil

    import torch

    from facetl.data.faces import align_face, create_detector, faces_in_photo
    from facetl.inference.classifiers import TorchClassifier
    from facetl.inference.photos import predict
    from facetl.runtime import Runtime

    assert load_run(face_run).record.preprocessing.faces.landmarks == "refined"  # a new run refines
    old = tmp_path / "old_run"
    shutil.copytree(face_run, old)
    checkpoint = torch.load(old / "best.pt", map_location="cpu", weights_only=True)
    del checkpoint["record"]["preprocessing"]["faces"]["landmarks"]  # as runs were saved before the setting
    torch.save(checkpoint, old / "best.pt")
    run = load_run(old)
    assert run.record.preprocessing.faces == FaceAlignment(landmarks="detector")
    # its predictions come from crops aligned with the detector's own landmarks
    crop = np.asarray(Image.open(people_by_gender(shared_datasets / "celebrity_faces")["woman"][-1]).convert("RGB"))
    photo, _ = paste_faces(background(480, 360, seed=3), [crop], [(240, 180, 150, 6.0)])
    path = tmp_path / "one.jpg"
    Image.fromarray(photo).save(path, quality=95)
    classifier = TorchClassifier(run, Runtime.for_inference("cpu"))
    (row,) = predict(classifier, [str(path)]).rows
    pixels = np.asarray(Image.open(path).convert("RGB"))
    (face,) = create_detector("mtcnn").detect([pixels])[0]
    expected = run.classify(align_face(pixels, face.landmarks, 48)[None], classifier.runtime)[0]
    assert row.face == 0 and np.allclose(row.probs, expected, atol=1e-5)
    refined = faces_in_photo(pixels, FaceAlignment(), 48, detector=create_detector("mtcnn")).used[0].crop
    assert not np.allclose(run.classify(refined[None], classifier.runtime)[0], expected, atol=1e-5)  # it matters


def test_predict_answers_once_per_face_and_says_when_there_is_none(face_run, shared_datasets, tmp_path, capsys):
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in people_by_gender(
        shared_datasets / "celebrity_faces")["man"][-3:]]
    photo, truth = paste_faces(background(900, 400, seed=5), crops,
                               [(150, 200, 120, 0.0), (450, 200, 150, 5.0), (750, 200, 100, -5.0)])
    group, blank = tmp_path / "group.jpg", tmp_path / "blank.jpg"
    Image.fromarray(photo).save(group, quality=95)
    Image.fromarray(background(300, 300, seed=7)).save(blank)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(face_run), str(group), str(blank), "--out", str(out),
                 "--annotate", str(tmp_path / "seen")]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == ["path", "face", "x", "y", "w", "h", "detection_score", "label", "probability"]
    group_rows = [r for r in rows if r["path"] == str(group)]
    assert len(group_rows) == 3
    boxes = [tuple(float(r[k]) for k in "xywh") for r in group_rows]
    assert all(m is not None for m in match_faces(truth, boxes))  # each answer sits on a pasted face
    assert all(abs(float(r["p_man"]) + float(r["p_woman"]) - 1) < 1e-5 for r in group_rows)
    blank_rows = [r for r in rows if r["path"] == str(blank)]
    assert len(blank_rows) == 1 and blank_rows[0]["label"] == "no face" and blank_rows[0]["face"] == ""
    assert "no face found in 1 photo" in capsys.readouterr().err
    annotated = Image.open(tmp_path / "seen" / "group.annotated.png")
    assert annotated.size == (900, 400)
    # nothing overwritten without being asked, and never a run folder's own files
    assert main(["predict", str(face_run), str(group), "--out", str(out)]) == 2
    assert main(["predict", str(face_run), str(group), "--out", str(out), "--overwrite"]) == 0
    config = (face_run / "config.yaml").read_text()
    assert main(["predict", str(face_run), str(group), "--out", str(face_run / "config.yaml"), "--overwrite"]) == 2
    assert (face_run / "config.yaml").read_text() == config


def test_predict_with_flip_averages_each_aligned_face_and_its_mirror_image(face_run, shared_datasets, tmp_path):
    from facetl.data.faces import create_detector, faces_in_photo
    from facetl.runtime import Runtime

    crop = np.asarray(Image.open(people_by_gender(shared_datasets / "celebrity_faces")["man"][-1]).convert("RGB"))
    photo, _ = paste_faces(background(480, 360, seed=4), [crop], [(240, 180, 140, 4.0)])
    path, out = tmp_path / "one.jpg", tmp_path / "preds.csv"
    Image.fromarray(photo).save(path, quality=95)
    assert main(["predict", str(face_run), str(path), "--tta", "flip", "--device", "cpu", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    run, cpu = load_run(face_run), Runtime.for_inference("cpu")
    pixels = np.asarray(Image.open(path).convert("RGB"))
    aligned = faces_in_photo(pixels, run.record.preprocessing.faces, 48, detector=create_detector("mtcnn")).used[0].crop
    plain, mirrored = run.classify(aligned[None], cpu)[0], run.classify(aligned[None, :, ::-1].copy(), cpu)[0]
    assert not np.allclose(plain, mirrored, atol=1e-4)
    np.testing.assert_allclose([float(row["p_man"]), float(row["p_woman"])], (plain + mirrored) / 2, atol=1e-5)


def test_a_run_recorded_before_landmark_refinement_resumes_with_the_detectors_landmarks(face_run, tmp_path):
    import shutil

    import torch

    old = tmp_path / "old_run"
    shutil.copytree(face_run, old)
    config = (old / "config.yaml").read_text()
    assert "\nlandmarks: refined\n" in config
    (old / "config.yaml").write_text(config.replace("landmarks: refined\n", ""))  # as saved before the setting
    for name in ("best.pt", "last.pt"):
        checkpoint = torch.load(old / name, map_location="cpu", weights_only=True)
        del checkpoint["record"]["preprocessing"]["faces"]["landmarks"]
        torch.save(checkpoint, old / name)
    assert main(["train", "--resume", str(old), "--epochs", "2"]) == 0
    assert "\nlandmarks: detector\n" in (old / "config.yaml").read_text()  # its last epoch cut faces as its first
    assert load_run(old).record.preprocessing.faces.landmarks == "detector"


def test_faces_command_aligns_with_the_landmarks_asked_for(photo_dataset, tmp_path):
    from facetl.data.faces import create_detector

    few = tmp_path / "few"
    for gender in ("man", "woman"):
        (few / gender).mkdir(parents=True)
        for photo in sorted((photo_dataset / gender).glob("0[01].jpg")):
            (few / gender / photo.name).symlink_to(photo)
    rows = {}
    for landmarks in ("detector", "refined"):
        assert main(["faces", str(few), "--out", str(tmp_path / landmarks), "--landmarks", landmarks]) == 0
        with open(tmp_path / landmarks / "faces.csv", newline="") as f:
            rows[landmarks] = {r["source"]: r for r in csv.DictReader(f) if r["status"] == "used"}
    assert len(rows["detector"]) == len(rows["refined"]) == 4
    detector = create_detector("mtcnn")
    columns = [c for c in rows["detector"][next(iter(rows["detector"]))] if c.endswith(("_x", "_y"))]
    for source, row in rows["detector"].items():
        (face,) = detector.detect([np.asarray(Image.open(few / source).convert("RGB"))])[0]
        marks = np.array([float(row[c]) for c in columns])
        assert np.allclose(marks, face.landmarks.ravel(), atol=0.051)  # MTCNN's own, as found
        refined = np.array([float(rows["refined"][source][c]) for c in columns])
        assert np.abs(refined - marks).max() > 0.5  # refinement moved them
    man = sorted((tmp_path / "detector" / "man").iterdir())[0]
    assert not np.array_equal(np.asarray(Image.open(man)),
                              np.asarray(Image.open(tmp_path / "refined" / "man" / man.name)))


def test_faces_command_makes_a_crop_dataset_with_the_same_layout(photo_dataset, tmp_path):
    out = tmp_path / "crops"
    assert main(["faces", str(photo_dataset), "--out", str(out), "--size", "64"]) == 0
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.parent != out and p.is_file())
    assert len(crops) == 32 and all(c.split("/")[0] in ("man", "woman") for c in crops)
    assert Image.open(out / crops[0]).size == (64, 64)
    assert (out / "faces.png").is_file() and (out / "faces.csv").is_file()
    assert main(["faces", str(photo_dataset), "--out", str(out)]) == 2  # not empty: refused
