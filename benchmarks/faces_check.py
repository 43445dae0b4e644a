"""Does the face detector find the faces of a group photo? Measured on photos with known faces.

Held-out celebrity_faces crops (112x112, ArcFace-aligned) are pasted, 60 to 200 pixels wide and rotated by
up to 10 degrees, onto 960x720 backgrounds, one to six per photo. Since the crops' landmarks are known,
so are every face's true box and landmarks. Prints detection recall (goal >= 0.95), box IoU, landmark
error and false detections, by face size.

    .venv/bin/python benchmarks/faces_check.py [--photos 60] [--seed 0] [--data ../shared/datasets/celebrity_faces]
                                               [--landmarks detector|refined]

With `--run RUN` (a run trained on celebrity_faces crops, e.g. gender from celebrity_faces_attributes.csv)
it also prints how often the run's label for a face found in the photo equals its label for the crop
itself, prepared as the run's training prepared it (decoded, or for a `--faces detect` run found and
aligned): the train/predict consistency that alignment is for (goal >= 0.95). Only files outside the run's
train and validation splits are pasted. `--landmarks` compares where the alignment's landmarks come from
(FaceAlignment.landmarks; default: what a new run uses); `--true-landmarks` also aligns every found face
with its true landmarks, the ceiling of any landmark method.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facetl.data.faces import align_face, alignment_transform, faces_in_photo, faces_in_photos, template_points
from facetl.data.faces.composite import PastedFace, box_iou, match_faces, random_composite
from facetl.data.faces.detect import create_detector
from facetl.preprocessing import FaceAlignment

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "celebrity_faces"
SIZE_BINS = ((20, 40), (40, 60), (60, 90), (90, 130), (130, 201))


@dataclass
class Composite:
    photo: np.ndarray
    truth: list[PastedFace]
    crop_paths: list[Path]      # truth[i] was pasted from crop_paths[truth[i].source]


def held_out_crops(root: Path, count: int, seed: int, exclude: set[str] = frozenset()) -> list[Path]:
    """`count` crops spread over all people, none of the files in `exclude` (a run's training files)."""
    if not root.is_dir():
        sys.exit(f"celebrity_faces not found at {root} (see shared/datasets/README.md); give it with --data")
    files = [p for p in sorted(root.glob("*/*.jpg")) if p.relative_to(root).as_posix() not in exclude]
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.choice(len(files), size=min(count, len(files)), replace=False)]


def make_composites(root: Path, photos: int, seed: int, size=(960, 720), sides=(60, 200),
                    exclude: set[str] = frozenset()) -> list[Composite]:
    rng = np.random.default_rng(seed)
    paths = held_out_crops(root, photos * 6, seed, exclude)
    composites, used = [], 0
    for _ in range(photos):
        take = paths[used:used + int(rng.integers(1, 7))]
        used += len(take)
        crops = [np.asarray(Image.open(p).convert("RGB")) for p in take]
        photo, truth = random_composite(crops, size[0], size[1], rng, sides=sides)
        composites.append(Composite(photo, truth, take))
    return composites


def detection_stats(composites: list[Composite], alignment: FaceAlignment) -> dict:
    detector = create_detector(alignment.detector, alignment.detect_side)
    rows, false_found = [], 0
    for item in composites:
        found = faces_in_photo(item.photo, alignment, 112, multi_face="all", detector=detector).faces
        found = [f for f in found if f.used]
        matches = match_faces(item.truth, [f.face.box for f in found])
        false_found += len(found) - sum(m is not None for m in matches)
        for truth, match in zip(item.truth, matches):
            if match is None:
                rows.append((truth.side, False, np.nan, np.nan, np.nan))
                continue
            face = found[match].face
            eyes = np.linalg.norm(truth.landmarks[0] - truth.landmarks[1])
            error = np.linalg.norm(face.landmarks - truth.landmarks, axis=1).mean() / eyes
            rows.append((truth.side, True, box_iou(truth.box, face.box), error,
                         alignment_error(face.landmarks, truth.landmarks, alignment.template)))
    return {"rows": np.array(rows, dtype=np.float64), "false": false_found}


def alignment_error(found: np.ndarray, truth: np.ndarray, template: str) -> float:
    """How far the crop aligned with `found` landmarks is from the crop aligned with the true ones: the mean
    distance, in pixels of a 112-pixel crop, between where the template's five points land in the two."""
    points = template_points(template, 112)
    from_true = np.linalg.inv(alignment_transform(truth, template, 112)) @ np.c_[points, np.ones(5)].T
    moved = alignment_transform(found, template, 112) @ from_true
    return float(np.linalg.norm(moved[:2].T - points, axis=1).mean())


def label_agreement(run_folder: Path, composites: list[Composite], landmarks: str | None = None,
                    true_landmarks: bool = False) -> dict:
    """The share of pasted faces whose label predicted from the photo (detected, aligned as `facetl predict`
    aligns) equals the label predicted from the crop itself (prepared as training prepared it)."""
    from facetl.inference.classifiers import TorchClassifier
    from facetl.inference.photos import face_alignment_for
    from facetl.inference.run import load_run
    from facetl.runtime import Runtime

    run = load_run(run_folder)
    runtime = Runtime.for_inference("cpu")
    prep = run.record.preprocessing
    alignment = face_alignment_for(TorchClassifier(run, runtime), "detect", None)
    if landmarks:
        alignment = dataclasses.replace(alignment, landmarks=landmarks)
    detector = create_detector(alignment.detector, alignment.detect_side)
    same = compared = missed = uncut = 0
    for item in composites:
        found = [f for f in faces_in_photo(item.photo, alignment, prep.size, multi_face="all",
                                           detector=detector).faces if f.used]
        matches = match_faces(item.truth, [f.face.box for f in found])
        missed += sum(m is None for m in matches)
        crops = {k: crop_as_trained(item.crop_paths[t.source], prep) for k, t in enumerate(item.truth)}
        crops = {k: crop for k, crop in crops.items() if crop is not None}
        uncut += len(item.truth) - len(crops)
        hits = [(k, m) for k, m in enumerate(matches) if m is not None and k in crops]
        if not hits:
            continue
        from_crops = run.classify(np.stack([crops[k] for k, _ in hits]), runtime).argmax(1)
        aligned = [found[m].crop if not true_landmarks else
                   align_face(item.photo, item.truth[k].landmarks, prep.size, alignment.template, alignment.scale)
                   for k, m in hits]
        from_photo = run.classify(np.stack([prep.colour_crop(a) for a in aligned]), runtime).argmax(1)
        same += int((from_crops == from_photo).sum())
        compared += len(hits)
    return {"faces": compared, "agree": same, "agreement": same / max(compared, 1), "not_found": missed,
            "crop_without_face": uncut, "landmarks": "true" if true_landmarks else alignment.landmarks}


def crop_as_trained(path: Path, prep) -> np.ndarray | None:
    """The crop file as the run's training store holds it: decoded, or for a `--faces detect` run its face
    found and aligned (None when the detector finds no usable face in it, as training would skip it)."""
    from facetl.data.images import decode_image

    if prep.faces is None:
        return decode_image(path, prep.size, prep.colour)[0]
    used = next(faces_in_photos([path], prep.faces, prep.size)).used
    if not used:
        return None
    return prep.colour_crop(used[0].crop)


def training_files(run_folder: Path) -> set[str]:
    """The files a run trained or validated on, so the composites use held-out faces only."""
    import csv

    with open(run_folder / "split.csv", newline="", encoding="utf-8") as f:
        return {row["path"] for row in csv.DictReader(f) if row["split"] in ("train", "val")}


def report(stats: dict, photos: int, seconds: float) -> str:
    rows = stats["rows"]
    lines = ["| faces (side px) | faces | recall | median IoU | IoU p10 | landmark error / eye distance "
             "| alignment error, px at 112 (mean, p90) |", "|---|---|---|---|---|---|---|"]
    for low, high in (*SIZE_BINS, (60, 201)):
        part = rows[(rows[:, 0] >= low) & (rows[:, 0] < high)]
        if not len(part):
            continue
        hit = part[part[:, 1] == 1]
        label = f"{low}-{high - 1}" if (low, high) in SIZE_BINS else f"all {low}-{high - 1} (the goal's)"
        lines.append(f"| {label} | {len(part)} | {hit.shape[0] / len(part):.3f} | {np.median(hit[:, 2]):.2f} | "
                     f"{np.percentile(hit[:, 2], 10):.2f} | {np.mean(hit[:, 3]):.3f} | "
                     f"{np.mean(hit[:, 4]):.2f}, {np.percentile(hit[:, 4], 90):.2f} |")
    recall = rows[rows[:, 0] >= 60, 1].mean()
    lines.append(f"\n{photos} photos, {len(rows)} pasted faces, {stats['false']} false detections, "
                 f"{seconds:.1f} s. Recall at >= 60 px {recall:.3f} (goal >= 0.95): "
                 f"{'met' if recall >= 0.95 else 'NOT met'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the celebrity_faces folder")
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default="60,200", help="smallest,largest pasted face side in pixels")
    parser.add_argument("--min-score", type=float, default=FaceAlignment().min_score)
    parser.add_argument("--landmarks", choices=("detector", "refined"),
                        help="where the alignment's landmarks come from (default: a new run's setting)")
    parser.add_argument("--true-landmarks", action="store_true",
                        help="with --run: also the agreement when found faces are aligned with their true landmarks")
    parser.add_argument("--run", type=Path, help="a run trained on celebrity_faces crops: also measure how often "
                                                  "its label from the photo equals its label from the crop")
    args = parser.parse_args()
    start = time.perf_counter()
    sides = tuple(int(v) for v in args.sides.split(","))
    exclude = training_files(args.run) if args.run else frozenset()
    composites = make_composites(args.data, args.photos, args.seed, sides=sides, exclude=exclude)
    alignment = FaceAlignment(min_score=args.min_score)
    alignment = dataclasses.replace(alignment, landmarks=args.landmarks) if args.landmarks else alignment
    stats = detection_stats(composites, alignment)
    print(f"landmarks: {alignment.landmarks}")
    print(report(stats, len(composites), time.perf_counter() - start))
    if args.run:
        for true in (False, True) if args.true_landmarks else (False,):
            agreement = label_agreement(args.run, composites, args.landmarks, true)
            print(f"\ncrop/photo label agreement of {args.run} (landmarks: {agreement['landmarks']}): "
                  f"{agreement['agree']} of {agreement['faces']} faces ({agreement['agreement']:.3f}; goal >= 0.95); "
                  f"{agreement['not_found']} pasted faces not found"
                  + (f", {agreement['crop_without_face']} crops in which training finds no face"
                     if agreement['crop_without_face'] else ""))


if __name__ == "__main__":
    main()
