"""`facetl serve`: check the command line, bind the port, open the runs, and hand the app to uvicorn.

The port is bound before the runs are opened, so a port in use is one line at once rather than after
seconds of loading. SIGTERM and Ctrl-C stop uvicorn gracefully (it finishes the requests in flight, at
most `SHUTDOWN_SECONDS`), and the command then returns 0.

No client can lock the server: a request's head must arrive within `--header-timeout`, open connections
are at most `--max-connections` (connections.py), and requests must name the server by one of the
allowed host names (app.py), so a web page elsewhere cannot reach it by DNS rebinding.
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
from facetl.serve.smoothing import DEFAULT_SECONDS
from facetl.serve.stream import StreamLimits
from facetl.serve.connections import connections_within, guarded_protocol, open_file_limit
from facetl.serve.reader import PhotoReader
from facetl.serve.runs import open_runs

SHUTDOWN_SECONDS = 10
MAX_UPLOAD_MB = 1024  # an upload is held in memory whole: a ceiling on what --max-upload-mb may ask
MAX_CONNECTIONS = 256  # the default, unless the open-file limit allows fewer
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # always allowed as the Host a request names


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
    header_timeout: float = 10.0             # seconds to send a request's head
    max_connections: int | None = None       # None: MAX_CONNECTIONS, or fewer under a low open-file limit
    allowed_hosts: tuple[str, ...] = ()      # Host names besides LOOPBACK_NAMES and --host; "*": any
    max_streams: int = StreamLimits.max_streams  # camera streams open at once
    smooth: float = DEFAULT_SECONDS          # camera streams: seconds a label is smoothed over (0: not at all)

    def check(self) -> None:
        problems = []
        if not 0 < self.header_timeout <= 3600:
            problems.append(f"--header-timeout must be more than 0 and at most 3600 seconds, "
                            f"not {self.header_timeout:g}")
        if not 0 <= self.smooth <= 3600:
            problems.append(f"--smooth {self.smooth:g}: give seconds from 0 to 3600")
        if self.max_streams < 1:
            problems.append(f"--max-streams must be at least 1, not {self.max_streams}")
        if self.max_connections is not None and self.max_connections < 1:
            problems.append(f"--max-connections must be at least 1, not {self.max_connections}")
        for name in self.allowed_hosts:
            if not name or "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
                problems.append(f"--allowed-hosts: {name!r} is not a host name, '*' or '*.domain'")
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
    max_connections = connection_limit(options.max_connections)
    sock = bind(options.host, options.port)
    try:
        served = open_runs(runs, options.engine, Runtime.for_inference(options.device, options.precision),
                           options.threads)
        reader = PhotoReader(served, options.min_face)
        hosts = allowed_hosts(options.host, options.allowed_hosts)
        limits = Limits(max_upload_bytes=round(options.max_upload_mb * 2**20),
                        stream=StreamLimits(max_streams=options.max_streams))
        app = create_app(reader, limits, options.threads, hosts, options.smooth)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        if not _loopback(host):
            print(f"warning: serving on {host}: anyone who can reach this machine can use it (there is no login); "
                  f"requests must name it as {' or '.join(hosts)} (--allowed-hosts adds names)", file=sys.stderr)
        print(f"facetl serve: {', '.join(r.name for r in served)} at {url} (Ctrl-C or SIGTERM stops)", flush=True)
        _run(app, sock, options.header_timeout, max_connections, limits.stream.max_frame_bytes)
        print("facetl serve: stopped", flush=True)
        return 0
    finally:
        sock.close()


def connection_limit(asked: int | None) -> int:
    """--max-connections as asked if the open-file limit holds it (else one line saying so); by default
    MAX_CONNECTIONS, or as many as that limit holds."""
    files = open_file_limit()
    fits = connections_within(files)
    if asked is None:
        return MAX_CONNECTIONS if fits is None else min(MAX_CONNECTIONS, fits)
    if fits is not None and asked > fits:
        raise FacetlError(f"--max-connections {asked} needs more open files than this process may have "
                          f"({files}, ulimit -n): at most {fits} here")
    return asked


def allowed_hosts(host: str, extra: tuple[str, ...]) -> list[str]:
    """The names a request's Host header may give: loopback, the address served on (unless it is every
    address, 0.0.0.0 or ::), and --allowed-hosts."""
    named = [] if host in ("", "0.0.0.0", "::") else [f"[{host}]" if ":" in host else host]
    return list(dict.fromkeys(name.lower() for name in (*LOOPBACK_NAMES, *named, *extra)))


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


def _run(app, sock: socket.socket, header_timeout: float, max_connections: int, max_frame_bytes: int) -> None:
    import uvicorn

    # h11 always (not httptools when installed): the limits live in its protocol class. The backlog is also
    # how many connections asyncio accepts at once, before the protocol can close any (connections.py).
    # A camera frame over max_frame_bytes closes its stream with 1009 as it arrives (the WebSocket layer
    # counts it); frames are JPEG already, so the messages are not deflated (no CPU spent for nothing).
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=SHUTDOWN_SECONDS,
                            server_header=False, http=guarded_protocol(header_timeout, max_connections),
                            backlog=min(128, max_connections), ws="websockets-sansio", ws_max_size=max_frame_bytes,
                            ws_per_message_deflate=False)
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
