"""Peak memory of `facetl predict RUN clip.mp4 --annotate DIR`: flat in --every and in the video's length?

Makes 1080p clips (25 fps) of celebrity_faces crops drifting over a background, 10 s and 60 s long, then runs
the real command on each, in a fresh process, with every frame analysed (--every 1) and with one frame in
a thousand (--every 1000), each time writing the frames CSV and the annotated video, and prints each run's
peak resident memory (ru_maxrss of that process) side by side. Annotating, the frames between two analysed
frames are painted and written as they come (at most a batch's worth, under 256 MiB, is held), so all four
figures should be about the same; before issue 29, --every 1000 held every frame of the clip (6 MB each at
1080p) until the end.

    .venv/bin/python benchmarks/bench_video_memory.py                       # 10 s and 60 s: long on 2 cores
    .venv/bin/python benchmarks/bench_video_memory.py --seconds 2 12        # a quick check
    .venv/bin/python benchmarks/bench_video_memory.py --run runs/gender     # a trained run instead of a tiny one

Without --run a tiny run (24 crops, 32 px, one epoch) is trained first: its answers do not matter here,
only the work the command does per frame. Run it alone; the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facetl.data.faces.composite import moving_faces  # noqa: E402
from facetl.data.video import VideoWriter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FPS = 25


def crops_by_sex(count: int) -> dict[str, list[Path]]:
    """`count` celebrity_faces crops of men and of women (every 150th of each)."""
    with open(DATA / "celebrity_faces_attributes.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {name: [DATA / "celebrity_faces" / r["filename"] for r in rows if r["Male"] == value][::150][:count]
            for name, value in (("man", "1"), ("woman", "-1"))}


def tiny_run(folder: Path) -> Path:
    """A two-class run trained for one epoch on 12 crops a class: enough for the command to run."""
    data = folder / "data"
    for name, paths in crops_by_sex(12).items():
        (data / name).mkdir(parents=True)
        for i, path in enumerate(paths):
            Image.open(path).save(data / name / f"{i:02d}.jpg")
    run = folder / "run"
    facetl("train", "--data", str(data), "--weights", "none", "--img-size", "32", "--epochs", "1",
           "--strategy", "full", "--out", str(run), "--cache-dir", str(folder / "cache"))
    return run


def make_clip(path: Path, seconds: int) -> None:
    """A 1920x1080 clip of three faces drifting over a background, `seconds` long at 25 fps."""
    people = crops_by_sex(2)
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in (people["man"][0], people["woman"][0],
                                                                 people["man"][1])]
    with VideoWriter(path, 1920, 1080, FPS) as writer:
        for frame, _ in moving_faces(crops, 1920, 1080, seconds * FPS, seed=7, sides=(160, 240), speed=8.0):
            writer.write(frame)


def facetl(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "facetl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"facetl {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")


def peak_rss(*args: str) -> tuple[float, float]:
    """`facetl ARGS` in a fresh process: (its peak resident memory in MiB, its wall seconds)."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: the progress bar would fill a pipe
        process = subprocess.Popen([sys.executable, "-m", "facetl", *args], stdout=subprocess.DEVNULL,
                                   stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not every child's so far
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"facetl {' '.join(args)} failed ({process.returncode}):\n{errors.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train a tiny one first)")
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 60], help="clip lengths (default 10 60)")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 1000], help="--every values (default 1 1000)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench_video_memory_") as tmp:
        folder = Path(tmp)
        run = args.run or tiny_run(folder)
        peaks: dict[tuple[int, int], tuple[float, float]] = {}
        for seconds in args.seconds:
            clip = folder / f"clip{seconds}s.mp4"
            make_clip(clip, seconds)
            print(f"clip: 1920x1080, {seconds} s at {FPS} fps ({seconds * FPS} frames), "
                  f"{clip.stat().st_size / 2**20:.1f} MiB", flush=True)
            for every in args.every:
                out = folder / f"out{seconds}-{every}"
                out.mkdir()
                peaks[seconds, every] = peak_rss("predict", str(run), str(clip), "--every", str(every),
                                                 "--out", str(out / "frames.csv"), "--annotate", str(out))
        print("\npeak RSS (MiB) of `facetl predict RUN clip --annotate DIR --out CSV`, 1080p:")
        print("| clip | " + " | ".join(f"--every {every}" for every in args.every) + " |")
        print("|---" * (len(args.every) + 1) + "|")
        for seconds in args.seconds:
            print(f"| {seconds} s | " + " | ".join(f"{peaks[seconds, every][0]:.0f} ({peaks[seconds, every][1]:.0f} s)"
                                                    for every in args.every) + " |")
        print("(in brackets: each run's wall time)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
