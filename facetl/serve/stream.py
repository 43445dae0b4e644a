"""The page's camera mode: WebSocket /api/stream, frames in, faces out, the latest frame always first.

A client sends each camera frame as one binary message (a JPEG, PNG or WebP, best downscaled: the page
sends 320 px JPEGs) and gets, per frame it is answered, one text message of JSON:

    {"type": "ready", "runs": [...], "limits": {...}, "smooth_seconds": S}  once, when the stream opens
    {"type": "answer", "frame": N, "dropped": D, "seconds": T, ...}        the photo API's answer for frame N
    {"type": "error", "frame": N, "error": "..."}       a frame that is not an image, or a broken run

Frames are numbered from 1 in the order they arrive. Each face of an answer keeps a `track` number
from frame to frame, and each run's label is smoothed over time with time constant S (smoothing.py, as
`predict --smooth` smooths a video; 0: not smoothed); the frame's own answer is that run's `raw`. T is
the frame's arrival, in seconds since the stream opened: the time the smoothing uses.

Latest frame wins: a frame that arrives while another is being read replaces the one waiting (it is
never queued), so a slow server answers fewer frames, each of them recent, instead of answers that fall
ever further behind the camera; `dropped` counts the frames replaced so far. The page itself sends its
next frame only when the previous one is answered.

Frames are read by the server's one worker, through the photo API's own path (PhotoReader.read_bytes),
between photo requests. What a stream may do is bounded like an upload, and a stream that goes too far
is closed with a code and a reason that say why:

    1009  a frame over max_frame_bytes (closed by the WebSocket layer, uvicorn's ws_max_size) or pixels
    1008  more than max_frames_per_second messages (over a second's burst; a text message counts as a frame
          does), or no frame for idle_seconds (text messages do not keep a stream open)
    1013  max_streams streams open already: try again later
    1012  the server is stopping (uvicorn's)

The handshake is refused (HTTP 403, JSON) when its Origin names a host the server does not answer for:
browsers let any web page open a WebSocket to 127.0.0.1, and only the Origin says whose page it is.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from facetl.data.images import UnreadableImage
from facetl.serve.reader import NonFiniteAnswer, PhotoAnswer
from facetl.serve.smoothing import StreamSmoothing

# what the reason of a close may hold: a close frame's payload is at most 125 bytes, 2 of them the code
MAX_REASON = 123
TOO_BIG, POLICY, TRY_LATER = 1009, 1008, 1013


@dataclass(frozen=True)
class StreamLimits:
    max_frame_bytes: int = 2 * 2**20        # one message (uvicorn's ws_max_size); a 320 px JPEG is ~20 KB
    max_frame_pixels: int = 3840 * 2160     # a 4K camera frame
    max_streams: int = 4                    # open at once: each shares the one worker
    max_frames_per_second: float = 60.0     # sustained; a second's worth may come at once
    idle_seconds: float = 30.0              # without a frame, a stream is closed and its slot freed


class StreamClosed(Exception):
    """Close the stream with this code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason[:MAX_REASON]


class LatestFrame:
    """One waiting frame at most (its number, bytes and arrival time): put() replaces it, take() waits for one."""

    def __init__(self):
        self._frame: tuple[int, bytes, float] | None = None
        self._arrived = asyncio.Event()
        self.dropped = 0

    def put(self, number: int, data: bytes, arrived_s: float) -> None:
        if self._frame is not None:
            self.dropped += 1
        self._frame = (number, data, arrived_s)
        self._arrived.set()

    async def take(self) -> tuple[int, bytes, float]:
        await self._arrived.wait()
        self._arrived.clear()
        frame, self._frame = self._frame, None
        return frame


class FrameRate:
    """A token bucket: `rate` frames a second, up to a second's worth at once."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.last = rate, rate, time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


Sniff = Callable[[bytes, int], None]                         # raises FrameRefused for a bad header
ReadFrame = Callable[[bytes], Awaitable[PhotoAnswer]]        # the photo path, on the worker


class FrameRefused(Exception):
    """A frame that is not read: too big closes the stream, anything else is an error message."""

    def __init__(self, message: str, too_big: bool):
        super().__init__(message)
        self.too_big = too_big


class Streams:
    """The streams of one app: how many are open, and each one's two loops (receive, answer)."""

    def __init__(self, limits: StreamLimits, runs: list[str], allowed_hosts: list[str] | None,
                 sniff: Sniff, read: ReadFrame, smoothing: Callable[[], StreamSmoothing], smooth_seconds: float):
        self.limits, self.runs, self.allowed_hosts = limits, runs, allowed_hosts
        self.sniff, self.read = sniff, read
        self.smoothing, self.smooth_seconds = smoothing, smooth_seconds  # a new StreamSmoothing per stream
        self.open = 0

    async def serve(self, websocket: WebSocket) -> None:
        refused = self._origin_refused(websocket.headers.get("origin"))
        if refused:
            await websocket.send_denial_response(JSONResponse({"error": refused}, 403))
            return
        await websocket.accept()
        if self.open >= self.limits.max_streams:
            await websocket.close(TRY_LATER, f"busy: {self.open} camera streams open, at most "
                                             f"{self.limits.max_streams}; try again later")
            return
        self.open += 1
        try:
            await self._run(websocket)
        finally:
            self.open -= 1

    async def _run(self, websocket: WebSocket) -> None:
        ready = {"type": "ready", "runs": self.runs, "limits": dataclasses.asdict(self.limits),
                 "smooth_seconds": self.smooth_seconds}
        await websocket.send_text(json.dumps(ready))
        frames, lock, opened = LatestFrame(), asyncio.Lock(), time.monotonic()
        loops = [asyncio.create_task(self._receive(websocket, frames, lock, opened)),
                 asyncio.create_task(self._answer(websocket, frames, lock, self.smoothing()))]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for loop in loops:  # a client gone mid-frame: the worker finishes that frame, nobody waits
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        ended = next(iter(done)).exception()
        if isinstance(ended, StreamClosed):
            try:
                await websocket.close(ended.code, ended.reason)
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client left first
        elif ended is not None and not isinstance(ended, WebSocketDisconnect):
            raise ended

    async def _receive(self, websocket: WebSocket, frames: LatestFrame, lock: asyncio.Lock, opened: float) -> None:
        """Every message counts against the rate (a text one is answered too, so it costs as much); only a
        frame counts as activity, so a client sending anything else loses its slot after idle_seconds."""
        limits, rate, number = self.limits, FrameRate(self.limits.max_frames_per_second), 0
        last_frame = time.monotonic()
        while True:
            left = limits.idle_seconds - (time.monotonic() - last_frame)
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(websocket.receive(), left)
            except asyncio.TimeoutError:
                raise StreamClosed(POLICY, f"idle: no frame for {limits.idle_seconds:g} s") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if not rate.allow():
                raise StreamClosed(POLICY, f"too many frames: more than {limits.max_frames_per_second:g} messages a "
                                           "second (send the next frame when the last is answered)")
            if message.get("bytes") is None:
                async with lock:
                    await websocket.send_text(json.dumps({"type": "error", "frame": None, "error":
                                                          "send each frame as one binary message (JPEG, PNG, WebP)"}))
                continue
            number += 1
            last_frame = time.monotonic()
            frames.put(number, message["bytes"], round(last_frame - opened, 3))

    async def _answer(self, websocket: WebSocket, frames: LatestFrame, lock: asyncio.Lock,
                      smoothing: StreamSmoothing) -> None:
        """Frames in arrival order, each answered; the stream's tracks and smoothing see every answered one."""
        while True:
            number, data, arrived_s = await frames.take()
            try:
                self.sniff(data, self.limits.max_frame_pixels)
                answer = await self.read(data)
                reply = {"type": "answer", "frame": number, "dropped": frames.dropped, "seconds": arrived_s,
                         **smoothing.answer(answer, arrived_s)}
            except FrameRefused as exc:
                if exc.too_big:
                    raise StreamClosed(TOO_BIG, str(exc)) from None
                reply = {"type": "error", "frame": number, "error": str(exc)}
            except UnreadableImage as exc:
                reply = {"type": "error", "frame": number, "error": f"cannot read the frame: {exc}"}
            except NonFiniteAnswer as exc:
                reply = {"type": "error", "frame": number, "error": str(exc)}
            async with lock:
                await websocket.send_text(json.dumps(reply))

    def _origin_refused(self, origin: str | None) -> str | None:
        """Why a browser page of this origin may not open a stream (None: it may). Clients that are not
        browsers send no Origin; they are bound by the Host check like every request."""
        if origin is None or self.allowed_hosts is None:
            return None
        host = (urlsplit(origin).hostname or "").lower()
        named = f"[{host}]" if ":" in host else host
        if any(_host_matches(named, pattern) for pattern in self.allowed_hosts):
            return None
        return (f"origin {origin[:100]!r}: only pages of {', '.join(self.allowed_hosts)} may open a camera stream "
                "(facetl serve --allowed-hosts adds names)")


def _host_matches(host: str, pattern: str) -> bool:
    """As Starlette's TrustedHostMiddleware matches a Host: exact, '*' any, '*.domain' its subdomains."""
    if pattern == "*" or host == pattern:
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])
