"""`facetl predict RUN IMAGE_OR_FOLDER_OR_VIDEO...`: the command line around inference/photos.py (photos),
inference/video_files.py (videos) and inference/annotate.py (--annotate).

What is here is the command's own: checking --out before any work, and saying what was written.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from facetl.errors import FacetlError
from facetl.inference.annotate import annotate, plan_annotations, write_annotations  # noqa: F401 (cli.py)
from facetl.inference.classifiers import Classifier
from facetl.inference.photos import collect_images, predict, prediction_table  # noqa: F401 (cli.py)
from facetl.inference.video_files import (VideoRequest, check_videos, photo_frame_rows,  # noqa: F401 (cli.py)
                                          predict_videos, split_media, tracks_path, video_alignment)


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
