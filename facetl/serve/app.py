"""The HTTP side of `facetl serve`: one page, a small JSON API, and the limits that keep bad uploads out.

GET|HEAD /        the page (page.html: plain HTML, CSS and JS, nothing loaded from elsewhere)
POST /api/predict a photo as the multipart field `image` -> every face with every run's answer
WS /api/stream    the page's camera mode: frames in, the same answers out, latest frame first (stream.py)
GET /api/models   the model card of every run
GET|HEAD /healthz liveness, and how many requests are waiting
GET /openapi.json the API's description. FastAPI's /docs and /redoc pages are switched off: they load
                  their scripts from a CDN, which a server on a closed network cannot reach.

Every refused request is a JSON `{"error": "..."}` with a 4xx (or 503) code; a run that answers NaN is
a 500 naming it. A request whose Host header names another server is refused (400): a web page
elsewhere could otherwise point a name it controls at 127.0.0.1 (DNS rebinding) and read the answers,
model cards and their paths included. An upload is held in memory only: python-multipart's streaming
parser fills a bytearray (Starlette's UploadFile would spool large files to disk), and it is decoded
from those bytes.

Scheduling: one worker thread decodes and reads every photo, in arrival order. The detector is not
thread-safe and torch's thread count is process-wide, and two photos at once on a small CPU would only
make both slower. Requests wait for the worker in a queue; beyond `max_waiting` requests in flight a new
one gets 503 at once rather than holding another upload in memory. A camera stream's frames go through
the same worker and the same reading, one frame of each stream waiting at most.
"""
from __future__ import annotations

import asyncio
import functools
import io
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from facetl.data.images import MAX_PIXELS, UnreadableImage
from facetl.serve.reader import NonFiniteAnswer, PhotoAnswer, PhotoReader
from facetl.serve.runs import ModelCard
from facetl.serve.smoothing import DEFAULT_SECONDS, StreamSmoothing
from facetl.serve.stream import FrameRefused, StreamLimits, Streams

FIELD = "image"
# Formats a photo may come in (those this Pillow can open). Pillow would also open, e.g., EPS through
# Ghostscript; an upload is untrusted, so only these are sniffed for.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
# The page may run its own inline script and style and show the photo it was given, nothing else.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20   # the whole request body
    max_pixels: int = MAX_PIXELS          # width x height, read from the header before decoding
    max_waiting: int = 16                 # predict requests in flight (reading, queued or being read)
    upload_seconds: float = 120.0         # to send the whole body: a stalled client does not hold a slot
    stream: StreamLimits = StreamLimits()  # the camera's WebSocket


@dataclass(frozen=True)
class Health:
    status: str
    runs: list[str]
    waiting: int


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


ERRORS = {code: {"description": why, "content": {"application/json": {"example": {"error": why}}}}
          for code, why in ((400, "malformed request"), (408, "upload too slow"), (413, "upload or image too large"),
                            (415, "not multipart/form-data, or the field is not an image"),
                            (422, "no image field, or an image that cannot be decoded"),
                            (503, "too many requests waiting"))}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "string", "format": "binary", "description": "a photo (JPEG, PNG, WebP, ...)"}}}}}}}


def create_app(reader: PhotoReader, limits: Limits = Limits(), threads: int = 1,
               allowed_hosts: list[str] | None = None, smooth_seconds: float = DEFAULT_SECONDS) -> FastAPI:
    """The app around an opened reader. `threads`: torch's threads in the worker that runs the models;
    `allowed_hosts`: the names a request's Host header may give (None: any); `smooth_seconds`: the camera
    stream's time constant for smoothing labels (0: none)."""
    worker = ReaderWorker(reader, threads)
    cards = [run.card for run in reader.runs]
    streams = Streams(limits.stream, [card.name for card in cards], allowed_hosts, _sniff_frame,
                      lambda data: worker.read(data, limits.stream.max_frame_pixels),
                      lambda: StreamSmoothing(reader.runs, smooth_seconds), smooth_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown()

    app = FastAPI(title="facetl serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Faces in a photo, each labelled by every served run. POST a photo as the "
                              f"multipart field `{FIELD}` to /api/predict.")
    _add_error_handlers(app)
    if allowed_hosts is not None:
        app.add_middleware(_HostCheck, allowed_hosts=allowed_hosts)
    _add_pages(app, cards, worker)
    _add_predict(app, worker, limits)

    @app.websocket("/api/stream")
    async def stream(websocket: WebSocket) -> None:
        await streams.serve(websocket)

    return app


class ReaderWorker:
    """The one thread that runs the reader (it is not thread-safe), warmed up when made; counts the photo
    requests in flight, so the server can refuse more than its limit."""

    def __init__(self, reader: PhotoReader, threads: int):
        self.reader, self.waiting = reader, 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="facetl-serve", initializer=_set_torch_threads,
                                       initargs=(threads,))
        self.pool.submit(reader.warm_up).result()

    async def read(self, data: bytes, max_pixels: int) -> PhotoAnswer:
        """The photo path: decode and read on the one worker, with the time waited for it."""
        submitted = time.perf_counter()

        def job() -> PhotoAnswer:
            started = time.perf_counter()
            answer = self.reader.read_bytes(data, max_pixels)
            answer.milliseconds["queue"] = round((started - submitted) * 1000.0, 1)
            return answer

        return await asyncio.get_running_loop().run_in_executor(self.pool, job)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _add_pages(app: FastAPI, cards: list[ModelCard], worker: ReaderWorker) -> None:
    """The page, the model cards and the health check."""
    page = files("facetl.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})

    @app.get("/api/models", response_model=list[ModelCard])
    async def models() -> list[ModelCard]:
        return cards

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health("ok", [card.name for card in cards], worker.waiting)

    # HEAD as GET without the body; a route of its own, so the API description has one operation per path
    app.add_api_route("/healthz", healthz, methods=["HEAD"], response_model=Health, include_in_schema=False)


def _add_predict(app: FastAPI, worker: ReaderWorker, limits: Limits) -> None:
    """POST /api/predict: one photo in, every face with every run's answer out."""

    @app.post("/api/predict", response_model=PhotoAnswer, responses=ERRORS, openapi_extra=UPLOAD_BODY)
    async def predict(request: Request) -> PhotoAnswer:
        if worker.waiting >= limits.max_waiting:
            raise ApiError(503, f"busy: {worker.waiting} requests in flight; try again shortly")
        worker.waiting += 1
        try:
            data = await _read_image_field(request, limits)
            _sniff(data, limits.max_pixels)
            try:
                return await worker.read(data, limits.max_pixels)
            except UnreadableImage as exc:
                raise ApiError(422, f"cannot read the image: {exc}") from None
            except NonFiniteAnswer as exc:
                raise ApiError(500, str(exc)) from None
        finally:
            worker.waiting -= 1


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer that is not a success is {"error": "..."}: ours, Starlette's 404/405, validation."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"not found: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, 422)

    @app.exception_handler(Exception)  # Starlette then re-raises it, and uvicorn logs the traceback
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal error (the server's log has the details)"}, 500)


async def _read_image_field(request: Request, limits: Limits) -> bytes:
    """The `image` field of a multipart body, counted as it arrives: a Content-Length over the limit is
    refused before reading, and a body that turns out longer (chunked, or a lying header) once it does."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(415, f"send the photo as multipart/form-data with a field named '{FIELD}' "
                            f"(e.g. curl -F {FIELD}=@photo.jpg URL/api/predict)")
    limit = limits.max_upload_bytes
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad Content-Length header")
        if int(length) > limit:
            raise ApiError(413, _too_big(limit))
    try:
        form = _FormField(params[b"boundary"], FIELD)
    except FormParserError as exc:  # e.g. a boundary longer than python-multipart allows
        raise ApiError(400, f"malformed multipart body: {exc}") from None

    async def receive() -> None:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, _too_big(limit))
            form.write(chunk)

    try:
        await asyncio.wait_for(receive(), limits.upload_seconds)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the upload took longer than {limits.upload_seconds:.0f} s") from None
    except ClientDisconnect:
        raise ApiError(400, "the client went away during the upload") from None
    except FormParserError as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    if form.data is None:
        raise ApiError(422, f"no '{FIELD}' field in the form: send the photo as the multipart field '{FIELD}'")
    if not form.complete:
        raise ApiError(400, f"the '{FIELD}' field ended early: the multipart body is incomplete")
    if not form.data:
        raise ApiError(422, f"the '{FIELD}' field is empty")
    return bytes(form.data)


class _HostCheck:
    """Starlette's TrustedHostMiddleware decides whether a request's Host is allowed; a refusal is answered
    as JSON like every other error (Starlette's own answer is plain text)."""

    _PASSED = "facetl.host_allowed"

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.allowed = allowed_hosts
        self.verdict = TrustedHostMiddleware(self._mark, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        await self.verdict(scope, receive, _discard)  # a refusal's plain text goes nowhere
        if scope.pop(self._PASSED, False):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        named = f"host {host[:100]!r}" if host else "no Host header"
        message = (f"{named}: this server answers requests for {', '.join(self.allowed)} only "
                   "(facetl serve --allowed-hosts adds names)")
        await JSONResponse({"error": message}, 400)(scope, receive, send)  # a WebSocket: its handshake's answer

    async def _mark(self, scope, receive, send) -> None:
        scope[self._PASSED] = True


async def _discard(message) -> None:
    pass


def _too_big(limit: int) -> str:
    return f"upload too large: more than {limit / 2**20:g} MB (the server's --max-upload-mb)"


class _FormField:
    """One field of a multipart body, collected in memory from python-multipart's streaming parser."""

    def __init__(self, boundary: bytes, name: str):
        self.name = name.encode()
        self.data: bytearray | None = None
        self.complete = False
        self._capturing = False
        self._field, self._value, self._headers = bytearray(), bytearray(), {}
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end})

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._capturing = self.data is None and params.get(b"name") == self.name  # the first such field
        if self._capturing:
            self.data = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._capturing:
            self.data += data[start:end]

    def _part_end(self) -> None:
        if self._capturing:
            self._capturing, self.complete = False, True


def _sniff_frame(data: bytes, max_pixels: int) -> None:
    """_sniff for a camera frame: too big closes the stream, anything else is an error message."""
    try:
        _sniff(data, max_pixels)
    except ApiError as exc:
        raise FrameRefused(str(exc), too_big=exc.status == 413) from None


def _sniff(data: bytes, max_pixels: int) -> None:
    """What the bytes are, from their header (never from the file name or Content-Type): 415 for what
    is not a photo, 413 for more pixels than allowed, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_formats()) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"image too large: more than {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise ApiError(415, f"not an image: send a photo ({', '.join(_formats())})") from None
    except Exception as exc:  # Pillow raises many types for a broken header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ApiError(422, f"cannot read the image header: {reason}") from None
    if width * height > max_pixels:
        raise ApiError(413, f"image too large: {width}x{height} pixels, more than {max_pixels:,}")


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in PHOTO_FORMATS if f in Image.OPEN)
