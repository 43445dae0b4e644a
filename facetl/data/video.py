"""Video files in and out through PyAV (FFmpeg's libraries, shipped inside its wheel): the `facetl[video]` extra.

Frames are decoded one at a time and handed on, so a 4K or hour-long video streams in bounded memory. A
file FFmpeg cannot open, one with no video stream or no frame, and frames beyond MAX_FRAME_PIXELS are one
FacetlError line each; a file that breaks part way keeps the frames decoded so far and says where it
stopped (`VideoReader.stopped`): a decoding error, fewer frames than an MP4 announces, or frames that end
well before the duration the file records (an MKV or WebM records no frame count, but it does record its
duration). Frames come upright, as a player shows them: a phone's rotation (the display matrix) is applied.
The annotated video is H.264 in MP4 with yuv420p pixels, what every browser plays, written under a
temporary name and renamed into place only when complete.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from facetl.errors import FacetlError
from facetl.runfolder import publish, temporary_beside

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".m2ts", ".ogv", ".y4m"}
# 8K UHD: a larger frame is refused rather than decoded (one RGB frame of 7680x4320 is already 100 MB)
MAX_FRAME_PIXELS = 7680 * 4320
INSTALL_HINT = "pip install 'facetl[video]'"


def is_video_name(name: str | Path) -> bool:
    path = Path(name)
    return not path.name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS


def require_av():
    """PyAV, or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise FacetlError(f"reading and writing videos needs PyAV: {INSTALL_HINT}") from None
    return av


@dataclass(frozen=True)
class Frame:
    index: int            # 0-based, in decoding order
    time_s: float         # presentation time from the start of the stream
    pixels: np.ndarray    # HxWx3 uint8 RGB


@dataclass(frozen=True)
class VideoInfo:
    width: int            # as shown once the first frame is read (a phone's portrait video is stored turned)
    height: int
    fps: float            # the stream's average rate (25 when the file does not say)
    frames: int | None    # as the container says: an estimate, None when unknown


class VideoReader:
    """`with VideoReader(path) as video: for frame in video: ...`; `video.stopped` says why decoding ended early."""

    def __init__(self, path: str | Path):
        av = require_av()
        self.path = Path(path)
        self.stopped: str | None = None
        try:
            self._container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise FacetlError(f"{self.path} is not a video FFmpeg can read ({_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise FacetlError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame- and slice-threaded decoding: FFmpeg's own threads
        context = self._stream.codec_context
        width, height = context.width or 0, context.height or 0
        if width * height > MAX_FRAME_PIXELS:
            self._container.close()
            raise FacetlError(f"{self.path}: frames of {width}x{height} are larger than facetl reads (at most "
                              f"{MAX_FRAME_PIXELS:,} pixels, 8K UHD); downscale it first")
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.info = VideoInfo(width, height, float(rate) if rate else 25.0, self._stream.frames or None)

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[Frame]:
        av = require_av()
        index, first_s, last_s = 0, 0.0, 0.0
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
                decoded = packet.decode()
            except StopIteration:
                break
            except (av.FFmpegError, ValueError) as exc:
                self.stopped = self._where(index, exc)
                break
            for frame in decoded:
                if frame.width * frame.height > MAX_FRAME_PIXELS:
                    raise FacetlError(f"{self.path}: frame {index} is {frame.width}x{frame.height}, larger than "
                                      f"facetl reads (at most {MAX_FRAME_PIXELS:,} pixels)")
                time_s = float(frame.time) if frame.time is not None else index / self.info.fps
                first_s, last_s = (time_s if index == 0 else first_s), time_s
                yield Frame(index, time_s, self._upright(frame))
                index += 1
        if index == 0:
            raise FacetlError(f"{self.path} has no video frames" + (f" ({self.stopped})" if self.stopped else ""))
        if self.stopped is None:
            self.stopped = self._ends_early(index, last_s - first_s + 1 / self.info.fps)

    def _upright(self, frame) -> np.ndarray:
        """The frame's pixels as a player shows them: turned by its display matrix's rotation (a phone's
        portrait video is stored landscape). A mirroring matrix is not undone: a mirrored face is still found."""
        pixels = frame.to_ndarray(format="rgb24")
        turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
        if not turns:
            return pixels
        if turns % 2 and self.info.width == frame.width:
            self.info = dataclasses.replace(self.info, width=frame.height, height=frame.width)
        return np.ascontiguousarray(np.rot90(pixels, k=turns))

    def _ends_early(self, frames: int, seconds: float) -> str | None:
        """Why the file ended before it says it should: fewer frames than announced (MP4 records a count), or,
        in a file that records no count (MKV, WebM), frames that stop well before the recorded duration (more
        than two frames and 50 ms short). A count, when there is one, is exact: a variable-rate video's long
        last frame does not make it look short."""
        if self.info.frames:
            if frames < self.info.frames:
                return self._where(frames, f"the file ends early ({self.info.frames} frames announced)")
            return None
        duration = self._recorded_seconds()
        if duration is not None and duration - seconds > 2 / self.info.fps + 0.05:
            return self._where(frames, f"the file ends early ({duration:.2f} s recorded)")
        return None

    def _recorded_seconds(self) -> float | None:
        """The video stream's recorded duration: its own, Matroska's per-track DURATION tag, or the file's when
        the video is its only stream (a longer sound track must not make a whole video look short)."""
        stream = self._stream
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", (stream.metadata.get("DURATION") or "").strip())
        if tag:
            return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
        if self._container.duration and len(self._container.streams) == 1:
            return self._container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        return None

    def _where(self, index: int, exc: Exception | str) -> str:
        seconds = index / self.info.fps
        return f"stopped after frame {index} ({seconds:.2f} s): {_reason(exc)}"


def _reason(exc: Exception | str) -> str:
    if getattr(exc, "strerror", None):  # FFmpeg's own words, without its error number and the path again
        return str(exc.strerror)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


class VideoWriter:
    """An H.264 MP4 (yuv420p, so browsers play it), written to a temporary name beside `path` and renamed to
    `path` by `finish()`; `abort()` (or leaving a `with` block on an exception) removes it."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float):
        av = require_av()
        self.path = Path(path)
        # yuv420p halves the colour planes: H.264 wants even sides, so an odd last row or column is dropped
        self.width, self.height = width - width % 2, height - height % 2
        fd, self._tmp = temporary_beside(self.path, suffix=".tmp.mp4")
        os.close(fd)
        # faststart: the index goes first, so a browser plays the file while it downloads
        self._container = av.open(self._tmp, mode="w", format="mp4", options={"movflags": "+faststart"})
        rate = _frame_rate(fps)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, "yuv420p"
        # veryfast: a quarter of medium's time, for a slightly larger file
        self._stream.options = {"preset": "veryfast", "crf": "23"}
        self._frame_type = av.VideoFrame
        self.frames = 0

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.finish()
        else:
            self.abort()

    def write(self, pixels: np.ndarray) -> None:
        frame = self._frame_type.from_ndarray(np.ascontiguousarray(pixels[:self.height, :self.width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> None:
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            publish(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the half-written file is removed either way
            pass
        Path(self._tmp).unlink(missing_ok=True)


def _frame_rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
