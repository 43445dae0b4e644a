"""Face detection and alignment on real photos: the astronaut portrait that scikit-image ships, and
group photos made from held-out celebrity_faces crops pasted at known places (facetl.data.faces.composite).
"""
from __future__ import annotations

import csv
import numpy as np
import pytest
from PIL import Image

from facetl.data.faces import (LANDMARKS, alignment_transform, create_detector, faces_in_photo, faces_in_photos,
                               template_points)
from facetl.data.faces.composite import background, box_iou, match_faces, paste_faces, random_composite
from facetl.data.images import UnreadableImage, read_photo
from facetl.errors import FacetlError
from facetl.preprocessing import FaceAlignment, Preprocessing

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
    with pytest.raises(FacetlError, match="template 'openface'.*multi-face rule 'most'") as exc:
        faces_in_photo(np.zeros((64, 64, 3), np.uint8), FaceAlignment(template="openface", multi_face="most"), 64)
    assert "\n" not in str(exc.value)


def test_extract_faces_end_to_end(tmp_path, astronaut, celebrity_crops, detector):
    from facetl.data.face_crops import FACES_CSV_HEADER, extract_faces
    from facetl.data.spec import DataSpec

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
    summary = extract_faces(DataSpec(str(data)), out, alignment=ALIGN, size=96, progress=False)

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
        extract_faces(DataSpec(str(data)), out, progress=False)


def _alignment_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance, in pixels of a 112-pixel crop, between the template's points in the crop aligned with
    `found` and in the crop aligned with the true landmarks."""
    points = template_points("arcface", 112)
    from_true = np.linalg.inv(alignment_transform(truth, "arcface", 112)) @ np.c_[points, np.ones(5)].T
    return float(np.linalg.norm((alignment_transform(found, "arcface", 112) @ from_true)[:2].T - points,
                                axis=1).mean())


def test_refined_landmarks_align_closer_to_the_truth(celebrity_crops, detector):
    rng = np.random.default_rng(3)
    errors = {"detector": [], "refined": []}
    for n in range(3):  # 12 faces, 70 to 170 pixels, tilted up to 10 degrees
        crops = [celebrity_crops[(n * 4 + k) % len(celebrity_crops)] for k in range(4)]
        photo, truth = random_composite(crops, 900, 600, rng, sides=(70, 170))
        for source in errors:
            found = faces_in_photo(photo, FaceAlignment(landmarks=source), 64, multi_face="all",
                                   detector=detector).used
            matches = match_faces(truth, [f.face.box for f in found])
            assert all(m is not None for m in matches)
            errors[source] += [_alignment_error(found[m].face.landmarks, t.landmarks) for t, m in zip(truth, matches)]
    detected, refined = np.mean(errors["detector"]), np.mean(errors["refined"])
    assert len(errors["refined"]) >= 10
    assert refined < 0.95 * detected, f"refined {refined:.2f} px against the detector's {detected:.2f} px"
    assert np.percentile(errors["refined"], 90) < 3.0


def test_new_alignments_refine_and_old_records_keep_the_detector_landmarks(group_photo, detector):
    assert FaceAlignment().landmarks == "refined"
    saved = FaceAlignment().to_dict()
    assert FaceAlignment.from_dict(saved) == FaceAlignment()
    old = {k: v for k, v in saved.items() if k != "landmarks"}  # a record written before the setting existed
    assert FaceAlignment.from_dict(old).landmarks == "detector"
    prep = Preprocessing.from_dict({"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "faces": old})
    assert prep.faces.landmarks == "detector"
    # the old setting cuts with the detector's own landmarks, the new one with others
    photo = group_photo[0]
    raw = detector.detect([photo])[0]
    as_before = faces_in_photo(photo, prep.faces, 64, multi_face="all", detector=detector)
    refined = faces_in_photo(photo, FaceAlignment(), 64, multi_face="all", detector=detector)
    for before, new, face in zip(as_before.faces, refined.faces, raw):
        assert np.array_equal(before.face.landmarks, face.landmarks)
        assert before.face.box == new.face.box and not np.array_equal(new.face.landmarks, face.landmarks)
    with pytest.raises(FacetlError, match="landmarks 'dlib'"):
        faces_in_photo(photo, FaceAlignment(landmarks="dlib"), 64, detector=detector)


def test_a_photo_with_dozens_of_faces(celebrity_crops, detector):
    import time

    rng = np.random.default_rng(4)
    crops = [celebrity_crops[k % len(celebrity_crops)] for k in range(30)]
    photo, truth = random_composite(crops, 1920, 1080, rng, sides=(60, 130))
    assert len(truth) >= 28
    start = time.perf_counter()
    result = faces_in_photo(photo, ALIGN, 64, multi_face="all", detector=detector)
    seconds = time.perf_counter() - start
    matches = match_faces(truth, [f.face.box for f in result.used])
    found = sum(m is not None for m in matches)
    assert found >= 0.9 * len(truth), f"{found} of {len(truth)} faces found"
    assert len(result.used) <= found + 2  # hardly any false faces
    assert all(f.crop.shape == (64, 64, 3) for f in result.used)
    assert seconds < 15, f"{seconds:.1f} s for {len(truth)} faces"


def test_faces_the_detector_misses_are_no_face_rows_not_crashes(celebrity_crops, detector, tmp_path):
    from facetl.data.faces import face_rows

    # stand-ins for a face turned away (squeezed to 40 % of its width) and a head lying sideways (60 degrees):
    # MTCNN misses many such faces (7 of 8 squeezed, 3 of 8 at 60 degrees, measured); these two it misses
    squeezed = background(480, 360, seed=8).copy()
    squeezed[60:284, 200:290] = np.asarray(Image.fromarray(celebrity_crops[0]).resize((45, 112)).resize((90, 224)))
    rotated, _ = paste_faces(background(480, 360, seed=8), [celebrity_crops[6]], [(240, 180, 180, 60.0)])
    paths = []
    for name, photo in (("squeezed", squeezed), ("rotated", rotated)):
        paths.append(tmp_path / f"{name}.jpg")
        Image.fromarray(photo).save(paths[-1], quality=92)
    results = list(faces_in_photos(paths, ALIGN, 64, multi_face="all", detector=detector))
    missed = 0
    for path, result in zip(paths, results):
        rows = face_rows(path.name, result, path.name)
        if result.faces:  # found after all: a crop like any other
            assert all(f.crop.shape == (64, 64, 3) for f in result.used) and len(rows) == len(result.faces)
        else:
            assert result.note == "no face" and result.error is None
            assert len(rows) == 1 and rows[0][-2] == "no face"
            missed += 1
    assert missed >= 1  # the no-face path was taken


def test_the_store_keeps_crops_of_each_landmark_source_apart(tmp_path, astronaut, detector):
    from facetl.data.store import RowCut, open_image_store

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=95)
    stores = [open_image_store([path], 64, tmp_path / "cache", progress=False,
                               cut=RowCut(faces=FaceAlignment(landmarks=source)))
              for source in ("detector", "refined")]
    assert stores[0].key != stores[1].key
    assert not np.array_equal(stores[0].images[0], stores[1].images[0])


def test_the_box_framing_cuts_the_face_box_as_found_not_turned_upright(celebrity_crops, detector):
    """FER's framing (mini_xception declares it): the detector's box, squared and widened by a tenth on every
    side, with the face left at the angle it has in the photo; the ArcFace framing turns it upright."""
    from facetl.data.faces.align import BOX_MARGIN, box_transform

    photo, _ = _one_face_photo(celebrity_crops[0], side=200, angle=20.0)
    (boxed,) = faces_in_photo(photo, FaceAlignment(template="box"), 64, detector=detector).used
    (upright,) = faces_in_photo(photo, ALIGN, 64, detector=detector).used
    assert boxed.crop.shape == (64, 64, 3) and boxed.face.box == upright.face.box

    def eye_angle(matrix):
        eyes = (matrix @ np.c_[boxed.face.landmarks[:2], np.ones(2)].T)[:2].T
        return np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1]))

    to_box = box_transform(boxed.face.box, 64)
    assert abs(abs(eye_angle(to_box)) - 20.0) < 6.0  # the paste's tilt is kept
    assert abs(eye_angle(alignment_transform(boxed.face.landmarks, "arcface", 64))) < 5.0  # a 5-point fit
    x, y, w, h = boxed.face.box
    centre = to_box @ np.array([x + w / 2, y + h / 2, 1.0])
    assert np.allclose(centre[:2], 32.0)  # the box's centre is the crop's
    assert np.isclose(to_box[0, 0] * max(w, h) * (1 + 2 * BOX_MARGIN), 64.0)  # the widened box fills the crop
    # and the crop is that region of the photo (averaged down, as the warp shrinks a large face), not another
    def region(shift: float) -> np.ndarray:
        to_big = np.diag([4.0, 4.0, 1.0]) @ box_transform((x + shift, y, w, h), 64)
        big = Image.fromarray(photo).transform((256, 256), Image.AFFINE, tuple(np.linalg.inv(to_big)[:2].ravel()),
                                               resample=Image.BILINEAR)
        return np.asarray(big.reduce(4)).astype(int)

    assert np.abs(region(0) - boxed.crop).mean() < 3.0 and np.abs(region(0.1 * w) - boxed.crop).mean() > 10.0
