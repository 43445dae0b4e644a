"""One answer per photo, whatever the command: a run trained on face crops, given a whole photo, finds its faces
in `facetl predict` as `facetl serve` and a video do, and all three give the same boxes and probabilities.

The photo is skimage's astronaut (512x512, one face), saved losslessly; the video is that photo as its one
frame, in a lossless codec, so all three paths see the same pixels. The run is tiny (24 celebrity crops at
32 px, a few epochs from random weights): its answers are not good, but they differ from image to image,
which is all the comparison needs.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.commandline import facetl, in_process

av = pytest.importorskip("av")
skdata = pytest.importorskip("skimage.data")

from facetl.cli import main  # noqa: E402

TOLERANCE = 1e-4  # the CSVs and the API round probabilities to 6 decimals; the rest is float noise


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def crops(tmp_path_factory, shared_datasets) -> Path:
    """Two class folders (man, woman) of 12 celebrity_faces crops (112x112) each."""
    table = shared_datasets / "celebrity_faces_attributes.csv"
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    root = tmp_path_factory.mktemp("crops") / "gender"
    for name, value in (("man", "1"), ("woman", "-1")):
        (root / name).mkdir(parents=True)
        for i, r in enumerate([r for r in rows if r["Male"] == value][::150][:12]):
            Image.open(shared_datasets / "celebrity_faces" / r["filename"]).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def crop_run(crops, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "gender"
    assert main(["train", "--data", str(crops), "--weights", "none", "--img-size", "32", "--epochs", "3",
                 "--strategy", "full", "--out", str(out), "--cache-dir", str(tmp_path_factory.mktemp("cache"))]) == 0
    return out


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(path)
    return path


def one_frame_video(photo: Path, path: Path) -> Path:
    """The photo as the only frame of a lossless video (FFV1 in Matroska)."""
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = pixels.shape[1], pixels.shape[0], "bgr0"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return path


def served_answer(run: Path, photo: Path) -> dict:
    """/api/predict of the serve app (the one `facetl serve` runs), through FastAPI's TestClient."""
    from fastapi.testclient import TestClient

    from facetl.runtime import Runtime
    from facetl.serve.app import create_app
    from facetl.serve.reader import PhotoReader
    from facetl.serve.runs import open_runs

    reader = PhotoReader(open_runs([str(run)], "torch", Runtime.for_inference("cpu")))
    with TestClient(create_app(reader)) as client:
        response = client.post("/api/predict", files={"image": (photo.name, photo.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def faces_of(rows: list[dict]) -> list[tuple[float, ...]]:
    """(x, y, w, h, p_man, p_woman) of each row, in order."""
    return [tuple(float(r[k]) for k in ("x", "y", "w", "h", "p_man", "p_woman")) for r in rows]


def test_a_photo_gets_the_same_faces_and_probabilities_from_predict_serve_and_a_one_frame_video(
        crop_run, astronaut, tmp_path):
    photo = facetl("predict", str(crop_run), str(astronaut), "--out", str(tmp_path / "photo.csv"))
    assert photo.returncode == 0, photo.stderr
    notes = [line for line in photo.stderr.splitlines() if "their faces are found" in line]
    assert len(notes) == 1 and "--faces none" in notes[0], photo.stderr  # says so, once
    from_photo = faces_of(read_csv(tmp_path / "photo.csv"))

    video = facetl("predict", str(crop_run), str(one_frame_video(astronaut, tmp_path / "astronaut.mkv")),
                   "--out", str(tmp_path / "video.csv"))
    assert video.returncode == 0, video.stderr
    from_video = faces_of(read_csv(tmp_path / "video.csv"))

    served = served_answer(crop_run, astronaut)
    [name] = served["faces"][0]["runs"] if served["faces"] else [None]
    from_serve = [(f["box"]["x"], f["box"]["y"], f["box"]["w"], f["box"]["h"],
                   f["runs"][name]["probabilities"]["man"], f["runs"][name]["probabilities"]["woman"])
                  for f in served["faces"]]

    assert len(from_serve) == 1, served  # the astronaut's one face
    np.testing.assert_allclose(from_photo, from_serve, atol=TOLERANCE)
    np.testing.assert_allclose(from_video, from_serve, atol=TOLERANCE)


def test_faces_none_labels_the_whole_photo_and_crops_stay_crops(crop_run, crops, astronaut, tmp_path, capsys):
    crop = crops / "man" / "00.png"
    whole = facetl("predict", str(crop_run), str(astronaut), "--faces", "none", "--out", str(tmp_path / "none.csv"))
    assert whole.returncode == 0, whole.stderr
    assert "their faces are found" not in whole.stderr
    [row] = read_csv(tmp_path / "none.csv")
    assert "x" not in row  # one row for the whole photo, no face columns: as before
    found = facetl("predict", str(crop_run), str(astronaut), "--out", str(tmp_path / "faces.csv"))
    [face] = read_csv(tmp_path / "faces.csv")
    assert abs(float(face["p_man"]) - float(row["p_man"])) > TOLERANCE  # the face, not the photo, was labelled
    assert found.returncode == 0

    for faces in ("auto", "none"):  # a 112-px crop for a 32-px run is a crop: labelled whole either way
        result = in_process(capsys, "predict", str(crop_run), str(crop), "--faces", faces,
                            "--out", str(tmp_path / f"crop-{faces}.csv"))
        assert result.returncode == 0 and "their faces are found" not in result.stderr, result.stderr
    assert read_csv(tmp_path / "crop-auto.csv") == read_csv(tmp_path / "crop-none.csv")
    assert "x" not in read_csv(tmp_path / "crop-auto.csv")[0]
