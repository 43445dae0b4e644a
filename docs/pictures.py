"""The guides' pictures of what a user gets, made by facetl's own commands from a real run on real photos.

    .venv/bin/python docs/pictures.py --work /tmp/facetl-pictures             # trains the README's run first
    .venv/bin/python docs/pictures.py --work /tmp/facetl-pictures --run RUN   # or uses a run you already have

The run is the README's smile detector (`facetl train --data ../shared/datasets/SMILEsmileD/SMILEs --backbone
mini_xception --weights fer2013 --strategy frozen`; `facetl backbones --fetch fer2013` once). Then, each through
the real command in a fresh process: `facetl evaluate` (the report's curves, confusion matrix, ROC and PR
curves, Grad-CAM gallery), `facetl explain` on one test photo, `facetl lr-find`, `facetl inspect`, and
`facetl predict` on a clip. There is no video of real people in ../shared/datasets, so the clip is made here from
real face photos: four celebrity_faces photos (chosen by eye: two smiling, two not) drifting over a plain grey
background; the captions say so. Every picture is copied into docs/img/ with at most 256 colours (each well
under 300 KB). Look at each before committing it.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
SMILES = DATASETS / "SMILEsmileD" / "SMILEs"
CELEBRITIES = DATASETS / "celebrity_faces"
EXAMPLE_PHOTO = SMILES / "negatives" / "negatives7" / "10105.jpg"   # the README's explain example
TRAIN = ["--data", str(SMILES), "--backbone", "mini_xception", "--weights", "fer2013", "--strategy", "frozen"]


def facetl(*args: str) -> None:
    print("$ facetl " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "facetl", *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a folder for the run and the commands' outputs")
    parser.add_argument("--run", help="an existing run of the README's command (default: train one in WORK)")
    parser.add_argument("--img", default=str(ROOT / "docs" / "img"), help="where the pictures go")
    args = parser.parse_args()
    work, img = Path(args.work), Path(args.img)
    work.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else work / "smile"
    if not (run / "report.md").is_file():  # a finished run has its report
        facetl("train", *TRAIN, "--out", str(run))
    report_pictures(run, img)
    explain_picture(run, work, img)
    lr_find_picture(work, img)
    inspect_picture(work, img)
    video_picture(run, work, img)
    for picture in sorted(img.glob("*.png")):
        print(f"{picture}: {picture.stat().st_size // 1024} KB")
    return 0


def save_small(source: Path, target: Path, width: int | None = None) -> None:
    """A copy with at most 256 colours (and at most `width` pixels wide): plots and crops lose nothing visible."""
    image = Image.open(source).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)


def report_pictures(run: Path, img: Path) -> None:
    if not (run / "eval-test" / "report.md").is_file():
        facetl("evaluate", str(run))
    for name in ("curves", "confusion_matrix", "roc", "precision_recall", "gradcam"):
        save_small(run / "eval-test" / f"{name}.png", img / f"report-{name.replace('_', '-')}.png", 1000)


def explain_picture(run: Path, work: Path, img: Path) -> None:
    out = work / "explain"
    facetl("explain", str(run), str(EXAMPLE_PHOTO), "--out", str(out), "--class", "positives", "--overwrite")
    save_small(out / f"{EXAMPLE_PHOTO.stem}.gradcam.png", img / "explain-gradcam.png", 1000)


def lr_find_picture(work: Path, img: Path) -> None:
    out = work / "lr-find"
    if not (out / "lr_find.png").is_file():
        facetl("lr-find", *TRAIN, "--out", str(out))
    save_small(out / "lr_find.png", img / "lr-find.png", 1000)


def inspect_picture(work: Path, img: Path) -> None:
    out = work / "inspect"
    if not (out / "samples.png").is_file():
        facetl("inspect", "--data", str(SMILES), "--out", str(out))
    save_small(out / "samples.png", img / "inspect-samples.png", 800)


# four celebrity_faces photos chosen by eye, two of a broad smile and two of a straight face, so that the frames
# show both answers; the smile run never saw celebrity_faces
CLIP_FACES = ["Robert Downey Jr/8161.jpg", "Mark Ruffalo/6427.jpg", "Miley Cyrus/6927.jpg", "James Spader/3914.jpg"]


def drifting_faces(faces: list[np.ndarray], width: int = 640, height: int = 480, frames: int = 100):
    """Frames of the photos drifting slowly over a plain grey background, each in its own lane, turning a little."""
    from facetl.data.faces.composite import paste_faces

    scene = np.full((height, width, 3), 200, dtype=np.uint8)
    margin, side = 40, 130  # room at the right edge for the last face's label
    lane = (width - 2 * margin) / len(faces)
    for t in range(frames):
        phase = 2 * np.pi * t / frames
        placements = [(margin + (i + 0.5) * lane + 8 * np.sin(phase + i), height / 2 + 60 * np.sin(phase + 2 * i), side,
                       6 * np.sin(phase + 3 * i)) for i in range(len(faces))]
        yield paste_faces(scene, faces, placements)[0]


def write_clip(path: Path, faces: list[np.ndarray], fps: int = 25) -> None:
    """A 4-second 640x480 H.264 clip of the photos drifting (PyAV, as facetl's video path reads it)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for frame in drifting_faces(faces):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def video_picture(run: Path, work: Path, img: Path) -> None:
    clip, out = work / "clip.mp4", work / "video"
    write_clip(clip, [np.asarray(Image.open(CELEBRITIES / name).convert("RGB")) for name in CLIP_FACES])
    facetl("predict", str(run), str(clip), "--out", str(work / "frames.csv"), "--annotate", str(out),
           "--smooth", "0.5", "--overwrite")
    with open(work / "frames.csv", newline="") as f:
        print(f"frames.csv: {sum(1 for _ in csv.DictReader(f))} rows (one per face per analysed frame)")
    frame_sheet(next(out.glob("*.mp4")), work / "video-frames.png")
    save_small(work / "video-frames.png", img / "video-frames.png", 1000)


def frame_sheet(video: Path, png: Path, gap: int = 8) -> None:
    """Frames 0, 25, 50 and 75 of the annotated video, two by two with a white gap between them."""
    import av

    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    height, width, _ = frames[0].shape
    sheet = np.full((2 * height + gap, 2 * width + gap, 3), 255, dtype=np.uint8)
    for k, index in enumerate((0, 25, 50, 75)):
        row, col = divmod(k, 2)
        sheet[row * (height + gap):row * (height + gap) + height, col * (width + gap):col * (width + gap) + width] = \
            frames[index]
    Image.fromarray(sheet).save(png)


if __name__ == "__main__":
    sys.exit(main())
