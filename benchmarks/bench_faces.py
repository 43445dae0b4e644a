"""How long a whole photo takes, from file to labelled faces, on this CPU: one markdown table.

Per photo, separately: JPEG decode, face detection (MTCNN), landmark refinement (FaceAlignment.landmarks
"refined": the landmark network again on each face, upright and mirrored), alignment (all faces),
classification (all faces, one batch), for ~640x480 and ~1920x1080 photos with 1 and with 6 faces
(celebrity_faces crops pasted on a blurred background), then photos per second for a folder of 200 photos read, detected
(photos of one size batched through the detector), aligned and classified.

    .venv/bin/python benchmarks/bench_faces.py [--quick] [--run RUN] [--detector-threads 1] [--landmarks detector]

Run it alone: the table is only as good as the machine is idle. It prints the load average before and
after; above ~1.5 on 2 cores the figures are inflated by other work.

Without --run the classifier is an untrained MobileNetV2 at 64 px with a linear head
(torchvision.models.mobilenet_v2(weights=None)): the same arithmetic as a trained one.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facetl.data.faces import align_face, aligned_landmarks, create_detector, faces_in_photos
from facetl.data.faces.composite import background, paste_faces
from facetl.data.images import read_photo
from facetl.preprocessing import FaceAlignment
from facetl.tables import markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "celebrity_faces"
CLASSIFIER_SIZE = 64
STAGES = ("decode", "detect", "refine", "align", "classify")


def classifier_from_run(run: Path):
    """Hook: the trained model and input size of a facetl run folder, once predict exposes its loader."""
    raise SystemExit(f"--run {run}: loading a run's model here needs the predict integration (not wired yet)")


def untrained_classifier() -> torch.nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None)
    model.classifier = torch.nn.Linear(model.last_channel, 2)
    return model.eval()


def crops_for_photos(count: int, seed: int) -> list[np.ndarray]:
    if not DATA.is_dir():
        sys.exit(f"celebrity_faces not found at {DATA} (see shared/datasets/README.md)")
    files = sorted(DATA.glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    return [np.asarray(Image.open(files[i]).convert("RGB")) for i in rng.choice(len(files), count, replace=False)]


def make_photo(width: int, height: int, faces: int, crops: list[np.ndarray], seed: int) -> np.ndarray:
    """`faces` crops in a row (two rows for six), each about a fifth of the photo's height."""
    side = height // 4 if faces > 1 else height // 3
    per_row = faces if faces <= 3 else (faces + 1) // 2
    rows = 1 if faces <= 3 else 2
    places = [((k % per_row + 0.5) * width / per_row, (k // per_row + 0.5) * height / rows, side, 4.0 * (-1) ** k)
              for k in range(faces)]
    return paste_faces(background(width, height, seed), crops[:faces], places)[0]


def time_photo(path: Path, detector, model, alignment: FaceAlignment, repeats: int) -> dict:
    """Median milliseconds of each stage for one photo file."""
    stages: dict[str, list[float]] = {"decode": [], "detect": [], "refine": [], "align": [], "classify": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        pixels = read_photo(path)
        t1 = time.perf_counter()
        faces = detector.detect([pixels], alignment.min_face)[0]
        t2 = time.perf_counter()
        image = Image.fromarray(pixels)
        faces = aligned_landmarks(image, faces, alignment, detector)
        t3 = time.perf_counter()
        crops = [align_face(image, f.landmarks, CLASSIFIER_SIZE, alignment.template, alignment.scale) for f in faces]
        t4 = time.perf_counter()
        classify(model, crops)
        t5 = time.perf_counter()
        for name, (a, b) in zip(stages, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]):
            stages[name].append((b - a) * 1000)
    result = {name: statistics.median(values) for name, values in stages.items()}
    result["faces"] = len(faces)
    return result


def classify(model: torch.nn.Module, crops: list[np.ndarray]) -> np.ndarray:
    if not crops:
        return np.zeros((0, 2))
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255)
    with torch.inference_mode():
        return model(batch).softmax(1).numpy()


def folder_rate(folder: Path, detector, model, alignment: FaceAlignment) -> tuple[float, int]:
    """Photos per second over the folder: read, detect (batched), align, classify; and faces found."""
    files = sorted(folder.glob("*.jpg"))
    start, faces = time.perf_counter(), 0
    for result in faces_in_photos(files, alignment, CLASSIFIER_SIZE, multi_face="all", detector=detector):
        crops = [f.crop for f in result.used]
        classify(model, crops)
        faces += len(crops)
    return len(files) / (time.perf_counter() - start), faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats and a 40-photo folder")
    parser.add_argument("--run", type=Path, help="classify with this trained run's model")
    parser.add_argument("--detector-threads", type=int, default=1)
    parser.add_argument("--landmarks", choices=("detector", "refined"),
                        help="where the alignment's landmarks come from (default: a new run's setting)")
    # one thread by default: on a shared 2-core machine a second spin-waiting thread made the
    # classifier 100x slower (1.2 s against 12 ms per batch, measured), and photos parallelise better
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the classifier")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, folder_size = (3, 40) if args.quick else (10, 200)
    load_before = os.getloadavg()
    alignment = FaceAlignment()
    alignment = dataclasses.replace(alignment, landmarks=args.landmarks) if args.landmarks else alignment
    model = classifier_from_run(args.run) if args.run else untrained_classifier()
    detector = create_detector("mtcnn", alignment.detect_side, args.detector_threads)
    crops = crops_for_photos(16, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for (width, height), faces in [((640, 480), 1), ((640, 480), 6), ((1920, 1080), 1), ((1920, 1080), 6)]:
            path = Path(tmp) / f"{width}x{height}_{faces}.jpg"
            Image.fromarray(make_photo(width, height, faces, crops, seed=faces)).save(path, quality=92)
            time_photo(path, detector, model, alignment, 1)  # warm-up: first-call allocations
            rows.append(((width, height), time_photo(path, detector, model, alignment, repeats)))
        folder = Path(tmp) / "folder"
        folder.mkdir()
        rng = np.random.default_rng(1)
        for n in range(folder_size):
            picked = [crops[i] for i in rng.choice(len(crops), 3, replace=False)]
            Image.fromarray(make_photo(640, 480, int(rng.integers(1, 4)), picked, seed=n)).save(
                folder / f"{n:03d}.jpg", quality=92)
        rate, found = folder_rate(folder, detector, model, alignment)
    print(table(rows, rate, found, folder_size, args, alignment))
    load_after = os.getloadavg()
    print(f"\nLoad average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores"
          + (": the machine was busy, the figures are inflated" if max(load_before[0], load_after[0]) > 1.5 else "")
          + ".")
    print(f"\nWhat dominates: {dominant(rows)}.")


def dominant(rows) -> str:
    parts = []
    for (width, height), r in rows:
        stage = max(STAGES, key=lambda s: r[s])
        share = r[stage] / sum(r[s] for s in STAGES)
        parts.append(f"{width}x{height} {r['faces']} face(s): {stage} {share:.0%}")
    return "; ".join(parts)


def table(rows, rate: float, found: int, folder_size: int, args, alignment: FaceAlignment) -> str:
    model = f"run {args.run}" if args.run else "untrained MobileNetV2 (weights=None) + linear head"
    lines = [f"Face pipeline on this CPU ({torch.get_num_threads()} torch threads for the classifier, "
             f"{args.detector_threads} for the detector), classifier: {model} at {CLASSIFIER_SIZE} px, "
             f"landmarks: {alignment.landmarks}, median of {3 if args.quick else 10} runs, milliseconds per photo.", ""]
    header = ["photo", "faces found", "decode", "detect", "refine landmarks", "align (all faces)",
              "classify (all faces)", "end to end"]
    cells = [[f"{width}x{height}", r["faces"], *(f"{r[s]:.1f}" for s in ("decode", "detect", "refine", "align",
                                                                        "classify")),
              f"**{sum(r[s] for s in STAGES):.1f}**"] for (width, height), r in rows]
    cells.append([f"folder of {folder_size} 640x480 photos (1-3 faces, {found} found), batched", *[""] * 6,
                  f"**{rate:.1f} photos/s**"])
    return "\n".join(lines + markdown_table(header, cells))


if __name__ == "__main__":
    main()
