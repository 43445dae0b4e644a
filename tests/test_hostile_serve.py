"""`facetl serve` against hostile clients, through a real uvicorn process and raw sockets: silent clients
cannot lock it, a request naming another host gets nothing, odd requests get a JSON error (never a
traceback), and a broken model is an error naming it, never a probability of null.

The module trains one tiny run (MobileNetV2, 24 random 24 px images, 32 px, one epoch) and breaks a copy
of it with finite weights (a checkpoint check for NaN weights passes it) whose answers are NaN: its last
features are all 5, and its head weighs them by +-3e38, so its logit is inf - inf. Its metrics.json holds
a NaN too.
"""
from __future__ import annotations

import json
import math
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from commandline import ServeProcess, in_process, one_line_error, write_images
from facetl.cli import main

httpx = pytest.importorskip("httpx", reason="httpx is needed to talk to the server (pip install httpx)")

FILE_LIMIT = 512    # ulimit -n of the module's server: fewer than the silent clients below
SILENT = 600        # more silent clients than that limit: before the fix they took every file it had
HEAD_SECONDS = 5    # the strict server's --header-timeout
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Still-Typing: "


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-serve")
    write_images(root / "data" / "no smile", 12, 0)
    write_images(root / "data" / "smile", 12, 1)
    run = root / "run"
    assert main(["train", "--data", str(root / "data"), "--weights", "none", "--img-size", "32", "--strategy",
                 "full", "--epochs", "1", "--backbone", "mobilenet_v2", "--out", str(run),
                 "--cache-dir", str(root / "cache")]) == 0
    broken = root / "broken"
    shutil.copytree(run, broken)
    checkpoint = torch.load(broken / "best.pt", weights_only=True)
    weights = checkpoint["model"]
    weights["backbone.features.18.1.weight"].zero_()  # the last BatchNorm: every feature is its bias, 5
    weights["backbone.features.18.1.bias"].fill_(5.0)
    weights["head.2.weight"].fill_(3e38)
    weights["head.2.weight"][:, ::2] = -3e38  # 5 x 3e38 overflows: half the terms are +inf, half -inf
    torch.save(checkpoint, broken / "best.pt")
    metrics = json.loads((broken / "metrics.json").read_text())
    (broken / "metrics.json").write_text(json.dumps({**metrics, "accuracy": math.nan}))
    return {"run": run, "broken": broken}


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """Both runs, every limit at its default, and at most FILE_LIMIT open files."""
    served = ServeProcess([str(runs["run"]), str(runs["broken"])], tmp_path_factory.mktemp("log") / "serve.log",
                    FILE_LIMIT)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def strict_server(runs, tmp_path_factory):
    """The good run with explicit limits: a 5 s head, 20 connections, and one more host name."""
    served = ServeProcess([str(runs["run"]), "--header-timeout", str(HEAD_SECONDS), "--max-connections", "20",
                     "--allowed-hosts", "faces.lan"], tmp_path_factory.mktemp("log") / "strict.log")
    yield served
    served.stop()


def silent_clients(server: ServeProcess, n: int) -> list[socket.socket]:
    """n connections that each send part of a request head, then nothing."""
    clients = []
    for _ in range(n):
        sock = server.connect(timeout=5)
        sock.sendall(PARTIAL_HEAD)
        clients.append(sock)
    return clients


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(max(within, 0.01))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


def json_error(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"] == "application/json", (status, headers, body)
    answer = json.loads(body)
    assert set(answer) == {"error"} and answer["error"], answer
    return answer["error"]


def test_silent_clients_do_not_lock_the_server_out(server):
    """600 clients that send half a head and go silent, against a server that may open 512 files: /healthz
    still answers at once (a new connection makes room by closing the one that waited longest)."""
    clients = silent_clients(server, SILENT)
    try:
        started = time.monotonic()
        response = httpx.get(f"{server.url}/healthz", timeout=5)
        assert response.status_code == 200 and response.json()["status"] == "ok"
        assert time.monotonic() - started < 5
        assert closed_by_server(clients[0], within=2)  # the oldest gave way
    finally:
        for sock in clients:
            sock.close()
    log = server.log.read_text()
    assert "Too many open files" not in log and "out of system resource" not in log, log[-2000:]


def test_the_head_timeout_closes_silent_clients_and_the_explicit_limit_holds(strict_server):
    clients = silent_clients(strict_server, 60)
    try:
        time.sleep(1)  # well within the head timeout: only the 40 oldest, over --max-connections 20, are gone
        closed = [closed_by_server(sock, within=0.05) for sock in clients]
        assert all(closed[:40]) and not any(closed[40:]), closed
        assert httpx.get(f"{strict_server.url}/healthz", timeout=5).status_code == 200
        deadline = time.monotonic() + HEAD_SECONDS + 5
        assert all(closed_by_server(sock, deadline - time.monotonic()) for sock in clients[40:])
    finally:
        for sock in clients:
            sock.close()
    # a client that trickles its head a byte at a time runs out too: the clock is not restarted by each byte
    with strict_server.connect() as sock:
        started = time.monotonic()
        sock.sendall(PARTIAL_HEAD)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                sock.sendall(b"a")
                time.sleep(0.2)
        assert time.monotonic() - started < HEAD_SECONDS + 3


def test_a_huge_multipart_boundary_is_a_json_400(server):
    boundary = "b" * 5000
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nx\r\n--{boundary}--\r\n".encode()
    status, headers, reply = server.exchange(
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert status == 400 and "boundary" in json_error(status, headers, reply).lower()


def test_requests_for_another_host_get_nothing(server, runs):
    """DNS rebinding: a page on evil.example that resolves its own name to 127.0.0.1 sends Host: evil.example."""
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        status, headers, body = server.exchange(f"GET /api/models HTTP/1.1\r\nHost: {host}\r\nConnection: close"
                                                "\r\n\r\n".encode())
        assert status == 400 and "allowed-hosts" in json_error(status, headers, body)
        assert str(runs["run"]).encode() not in body
    status, headers, body = server.exchange(b"GET /api/models HTTP/1.0\r\n\r\n")  # no Host at all
    assert status == 400 and json_error(status, headers, body)
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        status, _, body = server.exchange(f"GET /api/models HTTP/1.1\r\nHost: {host}\r\nConnection: close"
                                          "\r\n\r\n".encode())
        assert status == 200 and str(runs["run"]) in body.decode()
    assert httpx.get(f"{server.url}/api/models").status_code == 200


def test_allowed_hosts_adds_names_and_refuses_the_rest(strict_server):
    for host, expected in (("faces.lan", 200), ("FACES.LAN:80", 200), ("evil.example", 400)):
        status, _, _ = strict_server.exchange(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close"
                                              "\r\n\r\n".encode())
        assert status == expected, host


def test_head_is_get_without_a_body_and_a_bad_content_length_is_json(server):
    for path in ("/", "/healthz"):
        with server.connect() as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while piece := sock.recv(65536):
                reply += piece
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b"", (path, reply[:300])
    api = httpx.get(f"{server.url}/openapi.json").json()  # one operation per path: no duplicate-id warning
    assert list(api["paths"]["/healthz"]) == ["get"]
    for length in ("abc", "-1", "12, 13"):
        status, headers, body = server.exchange(
            f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n".encode())
        assert status == 400 and "malformed" in json_error(status, headers, body), length


def test_a_model_that_answers_nan_is_an_error_naming_it(server):
    from skimage import data

    photo = Path(server.log.parent / "astronaut.jpg")
    Image.fromarray(data.astronaut()).save(photo)
    response = httpx.post(f"{server.url}/api/predict", files={"image": ("a.jpg", photo.read_bytes(), "image/jpeg")},
                          timeout=60)
    assert response.status_code == 500 and "null" not in response.text and "NaN" in response.text
    assert "'broken'" in response.json()["error"]
    cards = httpx.get(f"{server.url}/api/models").json()  # its metrics.json's NaN: no number, not a failure
    assert [c["name"] for c in cards] == ["run", "broken"] and cards[1]["metrics"]["accuracy"] is None


@pytest.mark.parametrize("args, message", [
    (["--header-timeout", "0"], "--header-timeout must be"),
    (["--header-timeout", "soon"], "invalid float value"),
    (["--max-connections", "0"], "--max-connections: 0 is out of range"),
    (["--allowed-hosts", "a*b"], "--allowed-hosts: 'a*b' is not a host name"),
    (["--smooth", "-1"], "--smooth -1: give seconds from 0 to 3600"),
    (["--smooth", "nan"], "--smooth nan: give seconds from 0 to 3600"),
])
def test_bad_limits_are_one_line(tmp_path, capsys, args, message):
    one_line_error(in_process(capsys, "serve", str(tmp_path), *args), message)


def test_more_connections_than_the_file_limit_allows_is_one_line(tmp_path, capsys):
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft > 900_000:
        pytest.skip(f"this process may open {soft} files: no --max-connections is too many")
    one_line_error(in_process(capsys, "serve", str(tmp_path), "--max-connections", "1000000"),
                   "--max-connections 1000000 needs more open files", "ulimit -n")


def test_an_unknown_class_names_the_classes(runs, tmp_path, capsys):
    image = next((runs["run"].parent / "data" / "smile").iterdir())
    one_line_error(in_process(capsys, "explain", str(runs["run"]), str(image), "--out", str(tmp_path / "x"),
                              "--class", "frown"), "this run's classes are: no smile, smile")


def test_sigterm_stops_both_servers_with_no_traceback(server, strict_server):
    """Last: nothing above put a traceback in either server's log."""
    for served in (server, strict_server):
        assert served.stop() == 0
        log = served.log.read_text()
        assert "facetl serve: stopped" in log and "Traceback" not in log and "Warning" not in log, log[-3000:]
