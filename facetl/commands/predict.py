"""`facetl predict RUN IMAGE_OR_FOLDER_OR_VIDEO...`: the command line around inference/photos.py (photos),
inference/video_files.py (videos) and inference/annotate.py (--annotate).

What is here is the command's own: checking --out before any work, and saying what was written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from facetl.errors import FacetlError
from facetl.flags import add_min_face, add_out, add_overwrite, add_run, add_runtime_flags, whole_number
from facetl.inference.annotate import plan_annotations, write_annotations
from facetl.inference.classifiers import Classifier
from facetl.inference.photos import predict, prediction_table
from facetl.inference.tta import TTA_HELP, TTA_MODES
from facetl.inference.video_files import (VideoRequest, check_videos, photo_frame_rows, predict_videos, split_media,
                                          tracks_path, video_alignment)
from facetl.outputs import input_reads, refuse_misplaced
from facetl.runfolder import atomic_write_csv

NAME = "predict"
SUMMARY = "label new photos and videos with a run"
SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
EXAMPLES = [(f"facetl predict runs/smile {SMILES}/negatives/negatives7/10105.jpg", "one photo, a table on screen"),
            (f"facetl predict runs/smile {SMILES}/positives --out smiles.csv --tta flip",
             "a folder, every class's probability in a CSV"),
            ("facetl predict runs/smile clip.mp4 --out frames.csv --annotate annotated/ --every 5 --smooth 0.5",
             "a video: a row per face per 5th frame, tracks, smoothed labels, an annotated MP4")]


def add_arguments(parser) -> None:
    add_run(parser, help="a run folder (or, with --engine onnx, a .onnx file)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="photos or videos, or folders searched for them")
    model = parser.add_argument_group("model")
    model.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                       help="torch (default): the run's best.pt; onnx: RUN/model.onnx from facetl export, on ONNX "
                            "Runtime (RUN may also be the .onnx file)")
    model.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP + " (default none)")
    faces = parser.add_argument_group("faces")
    faces.add_argument("--faces", type=faces_choice, metavar="{detect,none}",
                       help="detect: find and align every face in each photo; none: label each image as a whole "
                            "(default: as the run was trained, with --faces detect or not)")
    add_min_face(faces, None, "smallest face side that counts, in photo pixels (default: the run's, or 20)")
    video = parser.add_argument_group("videos")
    video.add_argument("--every", type=whole_number(1, 10_000), default=1, metavar="K",
                       help="analyse every K-th frame (default 1); tracks follow faces between them")
    video.add_argument("--smooth", type=float, default=0.0, metavar="SECONDS",
                       help="smooth each track's probabilities over time, an exponential moving average with this "
                            "time constant (default 0: none); the raw label stays in raw_label")
    video.add_argument("--reid", choices=["auto", "on", "off"], default="auto",
                       help="a face the detector lost for up to 5 s keeps its track number when its dlib descriptor "
                            "and place match (default auto: on when the dlib weights are cached, "
                            "`facetl backbones --fetch dlib`)")
    output = parser.add_argument_group("output")
    add_out(output, "write a CSV here (path, [face, box, score,] label, probability, one column per class) instead "
                    "of printing a table; videos: a row per face per analysed frame (docs/video.md) and "
                    "NAME.tracks.csv beside it", metavar="CSV")
    output.add_argument("--annotate", metavar="DIR", help="also write each photo (PNG) or video (H.264 MP4) with its "
                                                          "faces boxed and labelled")
    add_overwrite(output, "existing --out or --annotate files")
    add_runtime_flags(parser)


def faces_choice(text: str) -> str:
    """--faces detect or none; `auto`, the old default, still means "as the run was trained"."""
    if text == "auto":
        print("warning: --faces auto is the default now; leave it out", file=sys.stderr)
    elif text not in ("detect", "none"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'detect', 'none')")
    return text


def run(args) -> int:
    from facetl.inference.classifiers import open_classifier
    from facetl.runtime import Runtime

    out = Path(args.out) if args.out else None
    photos, videos = split_media(args.images)
    check_outputs(args, out, bool(videos))
    if out is not None:
        check_csv_out(out, args.overwrite)
    faces = args.faces or "auto"
    if videos:  # a bad video or output is said before the run is loaded
        request = VideoRequest(args.every, args.smooth, args.tta, Path(args.annotate) if args.annotate else None,
                               out, args.overwrite, reid=args.reid)
        check_videos(videos, request)
    classifier = open_classifier(args.run, args.engine, Runtime.for_inference(args.device, args.precision))
    if videos:
        return predict_media(classifier, photos, videos, request, faces, args.min_face)
    result = predict(classifier, args.images, faces, args.min_face, tta=args.tta)
    if not result.rows:
        raise FacetlError("none of the images could be read")
    annotations = (plan_annotations(result.rows, Path(args.annotate), args.overwrite, out) if args.annotate
                   else [])
    if out is not None:
        atomic_write_csv(out, *prediction_table(result))
        print(f"wrote {len(result.rows)} predictions to {out}")
    else:
        print_predictions(result)
    if args.annotate:
        written = write_annotations(annotations)
        print(f"annotated {len(written)} photo(s) in {args.annotate}")
    return 1 if result.skipped else 0


def check_outputs(args, out: Path | None, videos: bool) -> None:
    """predict's outputs by the one rule, before any work: never an input (even with --overwrite), never inside
    an input folder (a rerun would read it) or a run folder."""
    run = Path(args.run).expanduser()
    reads = input_reads(args.images) + [("run folder" if run.is_dir() else "run", run)]
    if out is not None:
        refuse_misplaced(out, "--out", reads)
        if videos:
            refuse_misplaced(tracks_path(out), "--out", reads, given=f"{out} (its tracks CSV {tracks_path(out)})")
    if args.annotate:
        refuse_misplaced(args.annotate, "--annotate", reads)


def print_predictions(result) -> None:
    width = min(max(len(r.path) for r in result.rows), 80)
    names = result.class_names if len(result.class_names) <= 4 else []  # every class's probability, when few
    print(f"{'path':<{width}}  " + ("face  " if result.faces else "") + f"{'label':<20}  probability"
          + "".join(f"  {name[:12]:>12}" for name in names))
    for r in result.rows:
        face = (f"{'-' if r.face is None else r.face:<4}  " if result.faces else "")
        probability = "" if r.probability is None else f"{r.probability:.4f}"
        probs = "".join(f"  {q:>12.4f}" for q in r.probs) if names and r.probs else ""
        print(f"{r.path:<{width}}  {face}{(r.label or r.note):<20}  {probability:<11}{probs}")



def predict_media(classifier: Classifier, photos: list[str], videos: list[Path], request: VideoRequest,
                  faces: str = "auto", min_face: int | None = None) -> int:
    """`facetl predict` when videos are among the inputs: their frames and the photos' rows in one CSV (a
    photo's frame, time and track empty), photos annotated as PNG and videos as MP4. Exit 1 when a video
    stopped early or a photo was skipped."""
    alignment = video_alignment(classifier, faces, min_face)
    photo_result = predict(classifier, photos, faces, min_face, tta=request.tta) if photos else None
    photo_plan = []
    if photo_result is not None and request.annotate is not None:
        photo_plan = plan_annotations(photo_result.rows, request.annotate, request.overwrite, request.out)
    rows = photo_frame_rows(photo_result) if photo_result is not None else []
    results, summary = predict_videos(classifier, videos, alignment, request, rows)
    for r in results:
        if r.stopped:
            print(f"warning: {r.path}: {r.stopped}; the {r.frames} frames before are kept", file=sys.stderr)
        print(f"{r.path}: {r.frames} frames, {r.analysed} analysed, {r.faces} faces"
              + (f"; annotated video {r.annotated}" if r.annotated else ""))
    for line in summary.lines():
        print("  " + line)
    if request.out is not None:
        print(f"wrote {sum(r.faces for r in results) + len(rows)} rows to {request.out}, "
              f"{len(summary.tracks)} tracks to {tracks_path(request.out)}")
    if photo_plan:
        print(f"annotated {len(write_annotations(photo_plan))} photo(s) in {request.annotate}")
    skipped = photo_result is not None and photo_result.skipped
    return 1 if skipped or any(r.stopped for r in results) else 0


def check_csv_out(out: Path, overwrite: bool) -> None:
    """Refuse before any work (after facetl.outputs.refuse_misplaced, the rule for where any output may go): an
    existing file only when asked, and a CSV that could not be written is said now, not after the predictions."""
    if out.is_dir():
        raise FacetlError(f"--out {out} is a folder; give the CSV file's name (e.g. {out / 'predictions.csv'})")
    if out.exists() and not overwrite:
        raise FacetlError(f"--out {out} exists; pass --overwrite to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise FacetlError(f"--out {out}: its folder {folder} does not exist; create it or choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FacetlError(f"--out {out}: its folder {folder} is not writable; choose another --out")
