"""`facetl serve`: check the command line, bind the port, open the runs, and hand the app to uvicorn.

The port is bound before the runs are opened, so a port in use is one line at once rather than after
seconds of loading. SIGTERM and Ctrl-C stop uvicorn gracefully (it finishes the requests in flight, at
most `SHUTDOWN_SECONDS`), and the command then returns 0.
"""
from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from facetl.errors import FacetlError
from facetl.runtime import Runtime
from facetl.serve.app import Limits, create_app
from facetl.serve.reader import PhotoReader
from facetl.serve.runs import open_runs

SHUTDOWN_SECONDS = 10
MAX_UPLOAD_MB = 1024  # an upload is held in memory whole: a ceiling on what --max-upload-mb may ask


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "torch"
    max_upload_mb: float = 20.0
    device: str = "auto"
    precision: str = "auto"
    threads: int = 1
    min_face: int | None = None

    def check(self) -> None:
        problems = []
        if not 0 < self.max_upload_mb <= MAX_UPLOAD_MB:
            problems.append(f"--max-upload-mb must be more than 0 and at most {MAX_UPLOAD_MB}, "
                            f"not {self.max_upload_mb:g}")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be between 0 and 65535, not {self.port}")
        if self.threads < 1:
            problems.append(f"--threads must be at least 1, not {self.threads}")
        if self.min_face is not None and self.min_face < 1:
            problems.append(f"--min-face must be at least 1 pixel, not {self.min_face}")
        if problems:
            raise FacetlError("; ".join(problems))


def serve(runs: list[str], options: ServeOptions = ServeOptions()) -> int:
    options.check()
    sock = bind(options.host, options.port)
    try:
        served = open_runs(runs, options.engine, Runtime.for_inference(options.device, options.precision),
                           options.threads)
        reader = PhotoReader(served, options.min_face)
        app = create_app(reader, Limits(max_upload_bytes=round(options.max_upload_mb * 2**20)), options.threads)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        if not _loopback(host):
            print(f"warning: serving on {host}: anyone who can reach this machine can use it (there is no login)",
                  file=sys.stderr)
        print(f"facetl serve: {', '.join(r.name for r in served)} at {url} (Ctrl-C or SIGTERM stops)", flush=True)
        _run(app, sock)
        print("facetl serve: stopped", flush=True)
        return 0
    finally:
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a FacetlError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise FacetlError(f"cannot serve on host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once; a live listener still blocks
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise FacetlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run(app, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=SHUTDOWN_SECONDS,
                            server_header=False)
    with _signals_end_quietly():
        uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """uvicorn catches SIGINT and SIGTERM, shuts down, then raises the signal again for the handler it
    found; this handler takes it, so the command ends with 0 instead of dying by the signal."""
    caught: list[int] = []
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda number, frame: caught.append(number)) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
