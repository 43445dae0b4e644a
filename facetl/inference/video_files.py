"""Videos labelled face by face: every face of a video found, tracked and labelled, frame by frame.

The library behind `facetl predict RUN clip.mp4`. One row per face per analysed frame goes to the frames CSV
(FRAME_COLUMNS, then the run's label columns), a row per track to NAME.tracks.csv beside it, and optionally
the video again with each face boxed, numbered and labelled (H.264 MP4). `every` K analyses every K-th frame
(the annotated video holds each face's box and label until the next analysed frame); `smooth` SECONDS smooths
each track's probabilities (inference/video.py: ProbabilitySmoother) and the smoothed label is the one
written, the raw one beside it. Every output is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from facetl.data.folders import is_image_name
from facetl.data.video import VideoReader, VideoWriter, is_video_name
from facetl.errors import FacetlError
from facetl.inference.annotate import FacePainter, annotated_video_names
from facetl.inference.classifiers import Classifier
from facetl.inference.photos import Predictions, face_alignment_for, once_each
from facetl.inference.reid import open_embedder
from facetl.inference.video import FramePipeline, TrackedFace
from facetl.outputs import inside
from facetl.progress import progress_bar
from facetl.preprocessing import FaceAlignment
from facetl.runfolder import atomic_write_csv, publish, temporary_beside
from facetl.tables import csv_text

FRAME_COLUMNS = ["path", "frame", "time_s", "track", "x", "y", "w", "h", "detection_score"]
# Video frames are searched for faces on a copy at most this long (unless the run's alignment says less; photos:
# 1024). A 640x480 frame is searched whole, so its faces get exactly a photo's answers (at 480 the boxes and
# landmarks moved a little and the labels of a 48-pixel run agreed 1.6 points less often with the truth, for
# about 10 % less detection time); HD and 4K frames are searched at 640, a 1080p frame's faces from about 36 px
VIDEO_DETECT_SIDE = 640
# Frames analysed together: MTCNN's batch and one classifier pass for all their faces. Measured on a 640x480
# clip with 3 faces, every frame analysed, on a busy 2-core CPU: 1, 2, 4, 8 frames gave 6.5, 8.0, 9.9,
# 6.8 frames/s (noisy; larger batches make MTCNN's later stages sort through more candidates at once)
BATCH_FRAMES = 4
# The most decoded frames held at once while annotating (a batch and the frames between its analysed ones)
HELD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VideoRequest:
    every: int = 1                # analyse every K-th frame
    smooth: float = 0.0           # seconds; 0: no smoothing
    tta: str = "none"
    annotate: Path | None = None  # folder for the annotated videos
    out: Path | None = None       # frames CSV; its tracks go to tracks_path(out)
    overwrite: bool = False
    progress: bool = True
    reid: str = "auto"            # re-identify faces lost for a while: auto (when the dlib weights are cached), on, off


def split_media(inputs: list[str]) -> tuple[list[str], list[Path]]:
    """(photo inputs for `collect_images`, video files): a video file given, or found in a folder; a folder
    stays among the photo inputs only when it has photos too."""
    photos, videos = [], []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found, has_photos = [], False
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [Path(dirpath) / f for f in sorted(filenames) if is_video_name(f)]
                has_photos = has_photos or any(is_image_name(f) for f in filenames)
            videos += found
            if has_photos or not found:
                photos.append(item)
        elif path.is_file() and is_video_name(path):
            videos.append(path)
        else:
            photos.append(item)
    return photos, once_each(videos)


def video_alignment(classifier: Classifier, faces: str, min_face: int | None) -> FaceAlignment:
    """A video's faces are always found (a run on crops: as --faces detect), on a copy at most
    VIDEO_DETECT_SIDE long."""
    if faces == "none":
        raise FacetlError("--faces none cannot label a video: its faces are found and tracked; use auto or detect")
    alignment = face_alignment_for(classifier, "detect", min_face)
    return dataclasses.replace(alignment, detect_side=min(alignment.detect_side, VIDEO_DETECT_SIDE))


def photo_frame_rows(result: Predictions) -> list[list]:
    """The photos' predictions in the frames CSV's columns (frame, time and track empty)."""
    rows = []
    classes = len(result.class_names)
    for p in result.rows:
        box = [f"{v:.1f}" for v in p.box] if p.box else [""] * 4
        where = [p.path, "", "", "", *box, "" if p.score is None else f"{p.score:.4f}"]
        label = p.label or p.note
        probs = [f"{q:.6f}" for q in p.probs] if p.probs else [""] * classes
        if result.multi_attribute:
            rows.append(where + [label, label] + probs + list(p.decided or [""] * classes))
        else:
            rows.append(where + [label, "" if p.probability is None else f"{p.probability:.6f}", label] + probs)
    return rows


def tracks_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.tracks.csv")


def video_header(class_names: list[str], multi_attribute: bool) -> list[str]:
    if multi_attribute:
        return FRAME_COLUMNS + ["label", "raw_label"] + [f"p_{n}" for n in class_names] + list(class_names)
    return FRAME_COLUMNS + ["label", "probability", "raw_label"] + [f"p_{n}" for n in class_names]


def frame_rows(path: str, index: int, time_s: float, faces: list[TrackedFace], multi_attribute: bool) -> list[list]:
    rows = []
    for face in faces:
        where = [path, index, f"{time_s:.3f}", face.track, *(f"{v:.1f}" for v in face.box), f"{face.score:.4f}"]
        probs = [f"{p:.6f}" for p in face.probs]
        if multi_attribute:
            rows.append(where + [face.label, face.raw_label] + probs + list(face.decided or []))
        else:
            rows.append(where + [face.label, f"{face.probability:.6f}", face.raw_label] + probs)
    return rows


@dataclass
class TrackTally:
    first_s: float
    last_s: float = 0.0
    frames: int = 0
    labels: Counter = field(default_factory=Counter)   # label (or attribute) -> analysed frames with it
    answers: Counter = field(default_factory=Counter)  # the whole answer (multi-attribute: A+B) -> frames


class TrackSummary:
    """Per video and track: first and last time, analysed frames, and the share of them with each label (a
    multi-attribute run: with each attribute). Analysed frames are evenly spaced, so a share of them is a
    share of the track's time."""

    def __init__(self, class_names: list[str], multi_attribute: bool):
        self.class_names, self.multi_attribute = class_names, multi_attribute
        self.tracks: dict[tuple[str, int], TrackTally] = {}

    def add(self, path: str, time_s: float, faces: list[TrackedFace]) -> None:
        for face in faces:
            tally = self.tracks.setdefault((path, face.track), TrackTally(time_s))
            tally.last_s, tally.frames = time_s, tally.frames + 1
            tally.answers[face.label] += 1
            if self.multi_attribute:
                tally.labels.update(n for n, d in zip(self.class_names, face.decided or []) if d)
            else:
                tally.labels[face.label] += 1

    def table(self) -> tuple[list[str], list[list]]:
        header = ["path", "track", "first_s", "last_s", "frames", "label"] + [f"share_{n}" for n in self.class_names]
        rows = []
        for (path, track), t in self.tracks.items():
            top = t.answers.most_common(1)[0][0]
            rows.append([path, track, f"{t.first_s:.3f}", f"{t.last_s:.3f}", t.frames, top]
                        + [f"{t.labels[n] / t.frames:.3f}" for n in self.class_names])
        return header, rows

    def lines(self, limit: int = 12) -> list[str]:
        out = []
        for (path, track), t in list(self.tracks.items())[:limit]:
            shares = ", ".join(f"{n} {c / t.frames:.0%}" for n, c in t.labels.most_common(3))
            out.append(f"{Path(path).name} track {track}: {t.first_s:.2f}-{t.last_s:.2f} s, {t.frames} frames, {shares}")
        if len(self.tracks) > limit:
            out.append(f"... and {len(self.tracks) - limit} more tracks")
        return out


def plan_video_outputs(videos: list[Path], request: VideoRequest) -> list[Path | None]:
    """Each video's annotated target, and every output checked before any work: nothing existing replaced
    without --overwrite, no output onto an input, no two outputs onto one file."""
    targets: list[Path | None] = [None] * len(videos)
    named: list[tuple[str, Path]] = []  # (what, where) for every output
    if request.out is not None:
        named += [("--out", request.out), ("its tracks CSV", tracks_path(request.out))]
    if request.annotate is not None:
        targets = [inside(request.annotate, name) for name in annotated_video_names(videos)]
        named += [(f"the annotated video of {v}", t) for v, t in zip(videos, targets)]
    existing = [t for what, t in named if what != "--out" and (t.exists() or t.is_symlink())]
    if existing and not request.overwrite:
        raise FacetlError(f"{existing[0]} exists; pass --overwrite to replace it")
    inputs = {os.path.realpath(v) for v in videos}
    hit = next((t for _, t in named if os.path.realpath(t) in inputs), None)
    if hit is not None:
        raise FacetlError(f"{hit} is one of the videos; choose another output")
    seen: dict[str, str] = {}
    for what, where in named:
        other = seen.setdefault(os.path.realpath(where), what)
        if other != what:
            raise FacetlError(f"{other} and {what} would both be {where}; choose another --out or --annotate")
    return targets


def check_videos(videos: list[Path], request: VideoRequest) -> None:
    """Every video opens and has a first frame, and every output may be written, before any work: a bad file
    or a clash is one line now."""
    if not 0 <= request.smooth <= 3600:
        raise FacetlError(f"--smooth {request.smooth}: give seconds from 0 to 3600")
    plan_video_outputs(videos, request)
    for path in videos:
        with VideoReader(path) as video:
            next(iter(video))


class StreamedCsv:
    """A CSV written row block by row block under a temporary name, renamed to `path` when complete."""

    def __init__(self, path: Path, header: list[str]):
        self.path = path
        fd, self.tmp = temporary_beside(path)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self.file.write(csv_text(header, []))
        self.rows = 0

    def write(self, rows: list[list]) -> None:
        if rows:
            self.file.write(csv_text(None, rows))
            self.rows += len(rows)

    def finish(self) -> None:
        self.file.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


@dataclass
class VideoResult:
    path: Path
    frames: int = 0             # decoded
    analysed: int = 0
    faces: int = 0              # rows written
    stopped: str | None = None  # why decoding ended early
    annotated: Path | None = None


def predict_videos(classifier: Classifier, videos: list[Path], alignment: FaceAlignment, request: VideoRequest,
                   photo_rows: list[list] | None = None) -> tuple[list[VideoResult], TrackSummary]:
    """Every video through a FramePipeline of its own (tracks start at 1 in each video); the frames CSV
    (photo_rows, already in its columns, first), the tracks CSV and annotated videos written as complete
    files, or nothing under their names."""
    check_videos(videos, request)
    targets = plan_video_outputs(videos, request)
    embedder = open_embedder(request.reid)  # before any output is opened: --reid on without the weights stops here
    multi = classifier.decision.multi_attribute
    summary = TrackSummary(classifier.class_names, multi)
    table = StreamedCsv(request.out, video_header(classifier.class_names, multi)) if request.out else None
    results = []
    try:
        if table is not None:
            table.write(photo_rows or [])
        for path, target in zip(videos, targets):
            pipeline = FramePipeline(classifier, alignment, request.smooth, request.tta, embedder)
            results.append(_one_video(pipeline, path, target, request, table, summary))
        if table is not None:
            table.finish()
            atomic_write_csv(tracks_path(request.out), *summary.table())
    except BaseException:
        if table is not None:
            table.abort()
        raise
    return results, summary


def _one_video(pipeline: FramePipeline, path: Path, target: Path | None, request: VideoRequest,
               table: StreamedCsv | None, summary: TrackSummary) -> VideoResult:
    with VideoReader(path) as video:
        result = VideoResult(path, annotated=target)
        job = _VideoJob(pipeline, str(path), table, summary, target, video.info.fps, result)
        batch = None  # from the first frame's size
        bar = progress_bar(total=video.info.frames, desc=path.name, unit="frames", enabled=request.progress)
        pending = []  # (frame, analysed?): a batch's analysed frames, and (annotating) the frames after its first
        try:
            for frame in video:
                batch = batch or batch_frames(frame.pixels.nbytes, request.every, target is not None)
                if frame.index % request.every == 0:
                    pending.append((frame, True))
                    if sum(a for _, a in pending) == batch:
                        job.flush(pending)
                        pending = []
                elif target is not None:  # painted now with the latest faces, unless they are still to come
                    if pending:
                        pending.append((frame, False))
                    else:
                        job.paint(frame)
                bar.update(frame.index + 1 - bar.n)
            job.flush(pending)
            job.result.frames = frame.index + 1
            job.result.stopped = video.stopped
            job.finish()
        except BaseException:
            job.abort()
            raise
        finally:
            bar.close()
    return job.result


def batch_frames(frame_bytes: int, every: int, annotating: bool) -> int:
    """Analysed frames per batch. Annotating, a batch holds the frames between its analysed ones until it is
    analysed: (batch - 1) * every + 1 frames, kept under HELD_BYTES (one analysed frame at a time when --every
    is long), so memory does not grow with --every or with the video's length."""
    if not annotating:
        return BATCH_FRAMES
    return max(1, min(BATCH_FRAMES, HELD_BYTES // (max(frame_bytes, 1) * every)))


class _VideoJob:
    """One video's outputs as its batches come: rows, track tallies and (annotating) painted frames, the
    annotated video opened on its first frame (whose upright size it takes)."""

    def __init__(self, pipeline: FramePipeline, path: str, table: StreamedCsv | None, summary: TrackSummary,
                 target: Path | None, fps: float, result: VideoResult):
        self.pipeline, self.path, self.table, self.summary = pipeline, path, table, summary
        self.target, self.fps, self.result = target, fps, result
        self.multi = pipeline.classifier.decision.multi_attribute
        self.writer: VideoWriter | None = None
        self.painter: FacePainter | None = None
        self.shown: list[TrackedFace] = []  # the latest analysed frame's faces, drawn until the next one

    def flush(self, pending: list) -> None:
        """Analyse the batch, write its rows, and (annotating) paint each of its frames with the faces of the
        latest analysed frame at or before it."""
        analysed = [frame for frame, a in pending if a]
        answers = iter(self.pipeline.process([f.pixels for f in analysed], [f.time_s for f in analysed]))
        for frame, is_analysed in pending:
            if is_analysed:
                self.shown = next(answers)
                self.summary.add(self.path, frame.time_s, self.shown)
                self.result.analysed += 1
                self.result.faces += len(self.shown)
                if self.table is not None:
                    self.table.write(frame_rows(self.path, frame.index, frame.time_s, self.shown, self.multi))
            if self.target is not None:
                self.paint(frame)

    def paint(self, frame) -> None:
        if self.writer is None:
            height, width = frame.pixels.shape[:2]
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.writer = VideoWriter(self.target, width, height, self.fps)
            self.painter = FacePainter(self.writer.width, self.writer.height)
        self.writer.write(self.painter.paint(frame.pixels, self.shown))

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.finish()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
