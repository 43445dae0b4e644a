"""Face detection and alignment on real photos: the astronaut portrait that scikit-image ships, and
group photos made from held-out celebrity_faces crops pasted at known places (facetl.data.faces.composite).
"""
from __future__ import annotations

import csv
import numpy as np
import pytest
from PIL import Image

from facetl.data.faces import LANDMARKS, create_detector, faces_in_photo, faces_in_photos
from facetl.data.faces.composite import background, box_iou, match_faces, paste_faces, random_composite
from facetl.data.images import UnreadableImage, read_photo
from facetl.errors import FacetlError
from facetl.preprocessing import FaceAlignment

ALIGN = FaceAlignment()


@pytest.fixture(scope="module")
def detector(torch_one_thread):
    return create_detector("mtcnn")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def celebrity_crops(shared_datasets) -> list[np.ndarray]:
    """Eight crops of eight different people (the last files of their folders: not the first ones)."""
    root = shared_datasets / "celebrity_faces"
    if not root.is_dir():
        pytest.skip(f"celebrity_faces not found in {shared_datasets} (see shared/datasets/README.md)")
    people = sorted(p for p in root.iterdir() if p.is_dir())[:8]
    return [np.asarray(Image.open(sorted(p.glob("*.jpg"))[-1]).convert("RGB")) for p in people]


def _one_face_photo(crop: np.ndarray, side: int = 180, angle: float = 6.0, size=(640, 480)):
    photo, truth = paste_faces(background(*size, seed=3), [crop], [(size[0] * 0.45, size[1] * 0.5, side, angle)])
    return photo, truth[0]


def test_astronaut_one_face_with_plausible_landmarks(astronaut, detector):
    result = faces_in_photo(astronaut, ALIGN, 112, detector=detector)
    assert len(result.faces) == 1 and result.faces[0].used
    face = result.faces[0].face
    x, y, w, h = face.box
    # the face is in the upper middle of the 512x512 portrait, roughly 90x110 pixels
    assert 150 < x < 220 and 30 < y < 100 and 60 < w < 130 and 80 < h < 150
    assert face.score > 0.99
    eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
    assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]           # left before right
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()                    # eyes, then nose, then mouth
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks)
    assert result.faces[0].crop.shape == (112, 112, 3) and result.faces[0].crop.dtype == np.uint8


def test_composites_recall_and_box_accuracy(celebrity_crops, detector):
    rng = np.random.default_rng(0)
    ious, missed, found_total = [], 0, 0
    for n in range(3):
        photo, truth = random_composite(celebrity_crops[n * 2:n * 2 + 4] + celebrity_crops[:1], 960, 720, rng,
                                        sides=(64, 180))
        faces = detector.detect([photo])[0]
        matches = match_faces(truth, [f.box for f in faces])
        missed += sum(m is None for m in matches)
        ious += [box_iou(t.box, faces[m].box) for t, m in zip(truth, matches) if m is not None]
        found_total += len(truth)
    assert missed == 0, f"{missed} of {found_total} pasted faces missed"
    assert np.median(ious) > 0.7 and min(ious) > 0.5


def test_alignment_reproduces_the_original_crop(celebrity_crops, detector):
    for crop, (side, angle) in zip(celebrity_crops[:4], [(150, 7.0), (224, -9.0), (100, 3.0), (300, 0.0)]):
        photo, truth = _one_face_photo(crop, side, angle)
        result = faces_in_photo(photo, ALIGN, 112, detector=detector)
        aligned = result.used[0].crop.astype(np.float64)
        centre = (slice(16, 96), slice(16, 96))  # the face; the corners hold pasted background
        mad = np.abs(aligned[centre] - crop[centre]).mean()
        corr = np.corrcoef(aligned[centre].ravel(), crop[centre].astype(np.float64).ravel())[0, 1]
        assert mad < 16 and corr > 0.9, f"side {side}: mean abs difference {mad:.1f}, correlation {corr:.3f}"
        # and the landmarks found in the photo are those of the template, moved with the crop
        err = np.linalg.norm(result.used[0].face.landmarks - truth.landmarks, axis=1).mean()
        assert err < 0.06 * side


def test_no_face_is_an_empty_result(detector):
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for photo in (np.full((240, 320, 3), 200, np.uint8), noise, background(640, 480)):
        result = faces_in_photo(photo, ALIGN, 64, detector=detector)
        assert result.faces == [] and result.used == [] and result.note == "no face"


@pytest.fixture(scope="module")
def group_photo(celebrity_crops):
    places = [(150, 160, 170, 4.0), (420, 160, 120, -5.0), (620, 330, 90, 2.0)]
    return paste_faces(background(760, 480, seed=5), celebrity_crops[:3], places)


@pytest.mark.parametrize("rule", ["largest", "skip", "all"])
def test_multi_face_rules(group_photo, detector, rule):
    photo, truth = group_photo
    result = faces_in_photo(photo, ALIGN, 64, multi_face=rule, detector=detector)
    assert len(result.faces) == 3
    statuses = sorted(f.status for f in result.faces)
    expected = {"largest": ["not largest", "not largest", "used"], "skip": ["several faces"] * 3,
                "all": ["used"] * 3}[rule]
    assert statuses == expected
    if rule == "largest":
        assert box_iou(result.used[0].face.box, truth[0].box) > 0.5  # the 170-pixel face
    assert all(f.crop.shape == (64, 64, 3) for f in result.faces)


def test_multi_face_error_rule_names_the_photo(group_photo, detector):
    with pytest.raises(FacetlError, match="3 faces found.*multi-face rule is 'error'"):
        faces_in_photo(group_photo[0], FaceAlignment(multi_face="error"), 64, detector=detector)


def test_tiny_face_dropped_by_min_face(celebrity_crops, detector):
    places = [(200, 240, 200, 0.0), (500, 240, 64, 0.0)]
    photo, _ = paste_faces(background(640, 480, seed=2), celebrity_crops[:2], places)
    result = faces_in_photo(photo, FaceAlignment(min_face=80), 112, multi_face="all", detector=detector)
    assert sorted(f.status for f in result.faces) == ["too small", "used"]
    small = next(f for f in result.faces if f.status == "too small")
    assert small.crop is None and small.face.side < 80


def test_exif_rotated_photo(tmp_path, astronaut, detector):
    # stored sideways with an EXIF "rotate 90 clockwise to view" tag (orientation 6), as phones do
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(astronaut).rotate(90, expand=True).save(path, quality=95, exif=exif)
    result = faces_in_photo(path, ALIGN, 112, detector=detector)
    assert len(result.used) == 1
    upright = faces_in_photo(astronaut, ALIGN, 112, detector=detector).faces[0].face
    assert box_iou(result.used[0].face.box, upright.box) > 0.8


def test_huge_photo_detected_downscaled_boxes_in_original_pixels(celebrity_crops, tmp_path, detector):
    photo, truth = paste_faces(background(4000, 3000, seed=1), celebrity_crops[:1], [(2500, 1200, 600, 5.0)])
    path = tmp_path / "huge.jpg"
    Image.fromarray(photo).save(path, quality=90)
    assert detector.max_side < 4000  # detection ran on a copy
    result = faces_in_photo(path, ALIGN, 112, detector=detector)
    assert (result.width, result.height) == (4000, 3000) and len(result.used) == 1
    assert box_iou(result.used[0].face.box, truth[0].box) > 0.6
    aligned = result.used[0].crop[16:96, 16:96].astype(np.float64)
    assert np.corrcoef(aligned.ravel(), celebrity_crops[0][16:96, 16:96].astype(np.float64).ravel())[0, 1] > 0.9


def test_grey_and_alpha_photos(tmp_path, astronaut, detector):
    grey = tmp_path / "grey.png"
    Image.fromarray(astronaut).convert("L").save(grey)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, :100, 3] = 0  # a transparent band on the left: composited on white
    alpha = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(alpha)
    photos = list(faces_in_photos([grey, alpha], ALIGN, 112, detector=detector))
    assert read_photo(grey).shape == (512, 512, 3)
    assert (read_photo(alpha)[:, :100] == 255).all()
    assert [len(p.used) for p in photos] == [1, 1]


def test_unreadable_file(tmp_path, detector):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UnreadableImage, match="cannot decode"):
        faces_in_photo(bad, ALIGN, 112, detector=detector)
    (result,) = faces_in_photos([bad], ALIGN, 112, detector=detector)
    assert result.error and result.note.startswith("unreadable") and result.faces == []
    big = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(big)
    with pytest.raises(UnreadableImage, match="too large"):
        read_photo(big, max_pixels=5000)


def test_unknown_detector_and_bad_settings_are_one_line():
    with pytest.raises(FacetlError, match=r"unknown face detector 'retina'; valid detectors: mtcnn") as exc:
        create_detector("retina")
    assert "\n" not in str(exc.value)
    with pytest.raises(FacetlError, match="template 'dlib'.*multi-face rule 'most'") as exc:
        faces_in_photo(np.zeros((64, 64, 3), np.uint8), FaceAlignment(template="dlib", multi_face="most"), 64)
    assert "\n" not in str(exc.value)


def test_extract_faces_end_to_end(tmp_path, astronaut, celebrity_crops, detector):
    from facetl.extract import FACES_CSV_HEADER, extract_faces

    data = tmp_path / "photos"
    (data / "astro").mkdir(parents=True)
    (data / "group").mkdir()
    Image.fromarray(astronaut).save(data / "astro" / "a.jpg", quality=95)
    Image.fromarray(background(320, 240)).save(data / "astro" / "empty.png")
    for n in range(2):
        photo, _ = paste_faces(background(480, 360, seed=n), celebrity_crops[n:n + 2],
                               [(130, 180, 150, 3.0), (360, 180, 100, -4.0)])
        Image.fromarray(photo).save(data / "group" / f"g{n}.jpg", quality=95)
    (data / "group" / "broken.jpg").write_bytes(b"oops")
    out = tmp_path / "crops"
    summary = extract_faces(data, out, alignment=ALIGN, size=96, progress=False)

    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["astro/a.jpg", "group/g0.jpg",
                                                                                  "group/g1.jpg"]
    assert Image.open(out / "group" / "g0.jpg").size == (96, 96)
    rows = list(csv.DictReader((out / "faces.csv").open()))
    assert list(rows[0]) == FACES_CSV_HEADER and len(FACES_CSV_HEADER) == 7 + 2 * len(LANDMARKS) + 2
    status = {(r["source"], r["face"]): r["status"] for r in rows}
    assert status[("astro/empty.png", "")] == "no face"
    assert status[("group/broken.jpg", "")].startswith("unreadable")
    assert sorted(s for (src, _), s in status.items() if src == "group/g0.jpg") == ["not largest", "used"]
    assert (summary["photos"], summary["crops"], summary["no_face"], summary["unreadable"]) == (5, 3, 1, 1)
    assert Image.open(out / "faces.png").size[0] > 500
    with pytest.raises(FacetlError, match="not empty"):
        extract_faces(data, out, progress=False)
