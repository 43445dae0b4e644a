"""`facetl predict` on a video, end to end on this CPU: frames per second, where the time goes, and how
steady and right the answers are.

A 640x480 clip at 25 fps (with a camera's noise and flicker) is made from held-out faces of the run (celebrity_faces crops of people in the run's
test split when it has one) drifting over a background, each face's box and class known by construction. The
clip then goes through the command's own code (decode, detect, track, classify, write the frames CSV and the
annotated H.264 video) with --every 5 and with every frame analysed; each stage's time is measured inside
that same run. Then, on the every-frame run with --smooth and on more clips like it (--people, in clips of --faces):

- tracks: the share of each face's frames that carry its most common track number (target >= 95 %);
- accuracy of the raw labels, the smoothed labels, and of photo-by-photo prediction (`facetl predict
  --faces detect` on the same frames saved as PNG, every 5th frame);
- label flips per track per minute, raw against smoothed (target: smoothing at least halves them, for at
  most 1 point of accuracy).

    .venv/bin/python benchmarks/bench_video.py --run RUN [--frames 250] [--faces 3] [--people 12] [--smooth 0.5]

RUN: a run of two classes whose class folders or table name celebrity_faces people, e.g. the gender run
    facetl train --data ../shared/datasets/celebrity_faces_attributes.csv --images ../shared/datasets/celebrity_faces \\
        --target Male --split-by identity --limit 4000 --weights none --img-size 48 --epochs 6 --out runs/gender
Run it alone: on a shared CPU every figure is pessimistic; the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

import facetl.inference.video as inference_video
from facetl.inference.annotate import FacePainter
from facetl.inference.photos import predict
from facetl.inference.video_files import StreamedCsv, VideoRequest, predict_videos, video_alignment
from facetl.data.faces.composite import box_iou, moving_faces
from facetl.data.faces.detect import MTCNNDetector
from facetl.data.video import VideoReader, VideoWriter
from facetl.inference.classifiers import open_classifier
from facetl.inference.reid import FaceReID
from facetl.inference.video import FaceTracker, ProbabilitySmoother
from facetl.runtime import Runtime

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
STAGES = ("decode", "detect", "align", "classify", "track", "paint", "encode", "csv")


class StageClock:
    """Seconds spent in each stage, measured by wrapping the functions the command calls."""

    def __init__(self):
        self.seconds = Counter()
        self._undo = []

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def wrap_decode(self) -> None:
        original = VideoReader.__iter__
        clock = self

        def timed(reader):
            frames = original(reader)
            while True:
                start = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    return
                finally:
                    clock.seconds["decode"] += time.perf_counter() - start
                yield frame

        VideoReader.__iter__ = timed
        self._undo.append((VideoReader, "__iter__", original))

    def __enter__(self) -> "StageClock":
        self.wrap_decode()
        self.wrap(MTCNNDetector, "detect", "detect")
        self.wrap(inference_video, "faces_of_frame", "align")
        self.wrap(inference_video, "with_tta", "classify")
        self.wrap(FaceTracker, "update", "track")   # with re-identification's look-up of lost tracks inside
        self.wrap(FaceReID, "observe", "track")      # and its chips of the tracks that ended
        self.wrap(ProbabilitySmoother, "__call__", "track")
        self.wrap(FacePainter, "paint", "paint")
        self.wrap(VideoWriter, "write", "encode")
        self.wrap(VideoWriter, "finish", "encode")
        self.wrap(StreamedCsv, "write", "csv")
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def held_out_people(run: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """(class, crop) of `count` different people (the run's test split), alternating between the classes."""
    split = run / "split.csv"
    if not split.is_file():
        raise SystemExit(f"{split} not found: give a run trained on celebrity_faces (see the docstring)")
    with open(split, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    by_class: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        by_class[r["label"]].setdefault(r.get("group") or r["path"].split("/")[0], r["path"])
    classes = sorted(by_class)
    people = []
    for i in range(count):
        label = classes[i % len(classes)]
        found = list(by_class[label].values())
        people.append((label, found[(i // len(classes)) % len(found)]))
    return [(label, np.asarray(Image.open(DATA / "celebrity_faces" / p).convert("RGB"))) for label, p in people]


def make_clip(path: Path, crops: list[np.ndarray], frames: int, noise: float = 6.0) -> list[list[tuple]]:
    """The clip, as a camera sees it: each frame with sensor noise (sigma `noise` grey levels) and a slow
    flicker of brightness, so a classifier's answers wobble from frame to frame as they do on real video."""
    rng = np.random.default_rng(11)
    truth = []
    with VideoWriter(path, 640, 480, 25) as writer:
        for i, (frame, faces) in enumerate(moving_faces(crops, 640, 480, frames, seed=7, sides=(80, 130), speed=5.0)):
            gain = 1.0 + 0.12 * np.sin(i / 9.0)
            noisy = frame.astype(np.float32) * gain + rng.normal(0, noise, frame.shape)
            writer.write(np.clip(noisy, 0, 255).astype(np.uint8))
            truth.append([f.box for f in faces])
    return truth


def timed_run(classifier, clip: Path, folder: Path, every: int, smooth: float) -> tuple[float, Counter, int, Path]:
    out = folder / f"every{every}.csv"
    request = VideoRequest(every=every, smooth=smooth, annotate=folder / f"annotated{every}", out=out,
                           overwrite=True, progress=False)
    alignment = video_alignment(classifier, "auto", None)
    with StageClock() as clock:
        start = time.perf_counter()
        results, _ = predict_videos(classifier, [clip], alignment, request)
        wall = time.perf_counter() - start
    return wall, clock.seconds, results[0].frames, out


def match(rows: list[dict], truth: list[list[tuple]]) -> dict[tuple[int, int], dict]:
    """(frame, true face) -> the row whose box overlaps that face by IoU >= 0.5."""
    found = {}
    for r in rows:
        frame = int(r["frame"])
        box = tuple(float(r[k]) for k in "xywh")
        overlaps = [box_iou(box, t) for t in truth[frame]]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= 0.5:
            found[frame, best] = r
    return found


def flips_per_minute(rows: list[dict], column: str) -> float:
    by_track = defaultdict(list)
    for r in rows:
        by_track[r["track"]].append((float(r["time_s"]), r[column]))
    flips = minutes = 0.0
    for answers in by_track.values():
        labels = [label for _, label in answers]
        flips += sum(a != b for a, b in zip(labels, labels[1:]))
        minutes += (answers[-1][0] - answers[0][0]) / 60
    return flips / max(minutes, 1e-9)


def quality(classifier, clips: list[tuple[Path, Path, list[list[tuple]], list[str]]], folder: Path) -> None:
    """Tracks, accuracy and flips over clips of (video, its frames CSV, true boxes, true classes)."""
    shares, every, photo_right, raw_right, smooth_right, same_raw, same_smooth, seen = [], 0, 0, 0, 0, 0, 0, 0
    all_rows = []
    for n, (clip, frames_csv, truth, labels) in enumerate(clips):
        with open(frames_csv, newline="") as f:
            rows = [dict(r, track=f"{n}:{r['track']}") for r in csv.DictReader(f)]
        all_rows += rows
        found = match(rows, truth)
        for face in range(len(labels)):
            tracks = Counter(r["track"] for (frame, i), r in found.items() if i == face)
            if tracks:
                shares.append(tracks.most_common(1)[0][1] / sum(tracks.values()))
        photos = folder / f"photos{n}"
        photos.mkdir(exist_ok=True)
        with VideoReader(clip) as video:
            for frame in video:
                if frame.index % 5 == 0:
                    Image.fromarray(frame.pixels).save(photos / f"{frame.index:05d}.png")
        by_photo = predict(classifier, [str(photos)], faces="detect")
        photo_rows = [{"frame": str(int(Path(p.path).stem)), "label": p.label, **dict(zip("xywh", map(str, p.box)))}
                      for p in by_photo.rows if p.box]
        photo_right += sum(r["label"] == labels[k[1]] for k, r in match(photo_rows, truth).items())
        fifth = {k: r for k, r in found.items() if k[0] % 5 == 0}
        same_raw += sum(r["raw_label"] == labels[k[1]] for k, r in fifth.items())
        same_smooth += sum(r["label"] == labels[k[1]] for k, r in fifth.items())
        seen += sum(len(t) for t in truth[::5])
        every += sum(len(t) for t in truth)
        raw_right += sum(r["raw_label"] == labels[k[1]] for k, r in found.items())
        smooth_right += sum(r["label"] == labels[k[1]] for k, r in found.items())
    people = sum(len(c[3]) for c in clips)
    print(f"tracks: {people} faces in {len(clips)} clips; the share of a face's frames on its most common track: "
          f"lowest {min(shares):.1%}, mean {np.mean(shares):.1%} (target >= 95%)")
    print(f"accuracy on every 5th frame ({seen} faces, a missed face counts as wrong): photo by photo "
          f"{photo_right / seen:.1%}, video raw {same_raw / seen:.1%}, video smoothed {same_smooth / seen:.1%}")
    print(f"accuracy on every frame ({every} faces): raw {raw_right / every:.1%}, smoothed {smooth_right / every:.1%} "
          f"({(smooth_right - raw_right) / every * 100:+.1f} points)")
    print(f"label flips per track per minute: raw {flips_per_minute(all_rows, 'raw_label'):.1f}, "
          f"smoothed {flips_per_minute(all_rows, 'label'):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a two-class run on celebrity_faces (see above)")
    parser.add_argument("--frames", type=int, default=250, help="clip length in frames at 25 fps (default 250)")
    parser.add_argument("--faces", type=int, default=3, choices=[1, 2, 3], help="faces in the clip (default 3)")
    parser.add_argument("--people", type=int, default=12,
                        help="people for the quality figures, in clips of --faces (default 12)")
    parser.add_argument("--smooth", type=float, default=0.5, help="--smooth for the quality figures (default 0.5)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    classifier = open_classifier(args.run, "torch", Runtime.for_inference("cpu", "auto"))
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        folder = Path(tmp)
        people = held_out_people(args.run, max(args.people, args.faces))
        groups = [people[i:i + args.faces] for i in range(0, len(people) - args.faces + 1, args.faces)]
        clip = folder / "clip.mp4"
        truth = make_clip(clip, [crop for _, crop in groups[0]], args.frames)
        labels = [label for label, _ in groups[0]]
        print(f"clip: 640x480, {args.frames} frames at 25 fps, {args.faces} faces ({', '.join(labels)})")
        print("| analysed | frames/s end to end | " + " | ".join(STAGES) + " | other |")
        print("|---" * (len(STAGES) + 3) + "|")
        for every in (5, 1):
            wall, seconds, frames, out = timed_run(classifier, clip, folder, every, args.smooth if every == 1 else 0)
            shares = [f"{seconds[s] / frames * 1000:.1f}" for s in STAGES]
            other = (wall - sum(seconds.values())) / frames * 1000
            print(f"| every {every} | {frames / wall:.1f} | " + " | ".join(shares) + f" | {other:.1f} |")
        print("(stage columns: milliseconds per frame of the clip)")
        clips = [(clip, out, truth, labels)]
        for n, group in enumerate(groups[1:], 1):
            more = folder / f"clip{n}.mp4"
            more_truth = make_clip(more, [crop for _, crop in group], args.frames)
            more_out = folder / f"clip{n}.csv"
            request = VideoRequest(smooth=args.smooth, out=more_out, overwrite=True, progress=False)
            predict_videos(classifier, [more], video_alignment(classifier, "auto", None), request)
            clips.append((more, more_out, more_truth, [label for label, _ in group]))
        quality(classifier, clips, folder)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
