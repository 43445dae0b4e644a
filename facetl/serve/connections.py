"""The connections of `facetl serve`: uvicorn's h11 protocol with the two limits uvicorn lacks, and its
own refusals in JSON like every other error.

uvicorn bounds the idle time between two requests on a kept-alive connection (`timeout_keep_alive`), but
not the time a client takes to send a request's head: a client that sends half its headers and goes
silent keeps its connection, and a file descriptor, for ever (uvicorn issue #157 lists
`--timeout-request-start` as still to do). Nor does it bound open connections: `limit_concurrency`
answers 503 to new requests once it is reached, counting the silent connections, yet still accepts
every connection. So a few hundred silent clients locked the server out. Here:

- `head_seconds`: a connection waiting on its client with nothing of its own in the app (before its
  request's head is complete, between requests, or sending the rest of a body the app answered without
  reading) is closed once it has waited that long. A body the app is reading has the app's own limit.
- `max_connections`: a connection beyond it closes the connection that has waited longest on its client
  (a stalled client makes room for a new one); when none is waiting, the new one is closed.
- a connection upgraded to a WebSocket (the camera's stream) is the WebSocket protocol's from then on:
  its clock stops, and the stream's own limits hold it (stream.py).
- h11's 400 for a request it cannot parse (a bad request line, a Content-Length that is not a number) is
  `{"error": ...}`, not uvicorn's plain text.
"""
from __future__ import annotations

import asyncio
import json
import time

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

RESERVED_FILES = 64  # open files the server needs besides its connections: models, logs, the listener


class GuardedH11Protocol(H11Protocol):
    head_seconds: float = 10.0
    max_connections: int = 256
    _deadline: asyncio.TimerHandle | None = None
    _waiting_since: float = 0.0
    _upgraded: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()
        self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # h11 still reads this connection as a request waiting for its body: without this, the head clock
        # would close every stream --header-timeout seconds after it opened
        self._upgraded = True
        self._stop_watch()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": "malformed HTTP request: a request line or header (e.g. Content-Length) "
                                    "that cannot be parsed, or a head over the size limit"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=STATUS_PHRASES[400]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _waiting_on_client(self) -> bool:
        """Before a complete head, between requests, or for the rest of a body already answered."""
        return (not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
                and (self.cycle is None or self.cycle.response_complete))

    def _watch(self) -> None:
        """Start the clock when the connection starts waiting on its client; stop it when the app has the
        request. The clock is not restarted by each byte: a client trickling its head still runs out."""
        if self._upgraded or not self._waiting_on_client():
            self._stop_watch()
        elif self._deadline is None:
            self._waiting_since = time.monotonic()
            self._deadline = self.loop.call_later(self.head_seconds, self._hang_up)

    def _stop_watch(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _hang_up(self) -> None:
        self._stop_watch()
        self.transport.close()

    def _make_room(self) -> None:
        """Over max_connections, close the connection that has waited longest on its client, else this one."""
        open_now = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_now) <= self.max_connections:
            return
        waiting = [c for c in open_now if c is not self and getattr(c, "_deadline", None) is not None]
        min(waiting, key=lambda c: c._waiting_since, default=self)._hang_up()


def guarded_protocol(head_seconds: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn builds each connection with, holding these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"head_seconds": head_seconds, "max_connections": max_connections})


def open_file_limit() -> int | None:
    """How many files this process may open (the soft RLIMIT_NOFILE, `ulimit -n`); None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connections_within(files: int | None) -> int | None:
    """The most connections that fit in `files` open files: each connection holds one, and up to as many
    again may be accepted (one accept batch) or closing (one more) before the protocol sees them."""
    return None if files is None else max(1, (files - RESERVED_FILES) // 3)
