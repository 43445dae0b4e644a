"""`facetl serve`'s camera mode: the WebSocket /api/stream of a real uvicorn process, spoken to by the
`websockets` client, and the page in Debian's chromium with a made clip as its camera (skipped with the
reason when chromium, chromedriver or selenium is missing).

The module trains one tiny run (MobileNetV2, 24 random 24 px images, 32 px, one epoch): its labels mean
nothing, its faces are found by the real detector. The frames are celebrity_faces crops pasted at known
places on a plain background, so where each face is is known by construction.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commandline import ServeProcess, headless_chromium, write_images
from facetl.cli import main
from facetl.data.faces.composite import background, box_iou, paste_faces

httpx = pytest.importorskip("httpx", reason="httpx is needed to talk to the server (pip install httpx)")
websockets = pytest.importorskip("websockets", reason="websockets is needed for the camera stream "
                                                      "(pip install websockets)")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

HEAD_SECONDS = 2     # the server's --header-timeout: a stream must outlive it
# Camera mode must answer >= 8 frames a second with p95 latency <= 250 ms on this 2-core CPU: measured by
# benchmarks/bench_camera.py on the documented runs. Here the test shares the CPU with the rest of the suite
# (two workers), so it asks for half of that: answers keep flowing, one frame at a time, and stay recent.
MIN_ANSWERS_PER_SECOND, MAX_P95_MS = 4, 500
MAX_STREAMS = 2      # the server's --max-streams
SMOOTH = 0.5         # serve's default --smooth: seconds a camera stream's labels are smoothed over
# the clip's faces: centre x, centre y, side, angle, in a 640x480 frame (the page sends it at 320x240)
PLACES = [(190, 250, 170, 4.0), (450, 230, 150, -5.0)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camera-run")
    write_images(root / "data" / "no smile", 12, 0)
    write_images(root / "data" / "smile", 12, 1)
    assert main(["train", "--data", str(root / "data"), "--weights", "none", "--img-size", "32", "--strategy",
                 "full", "--epochs", "1", "--backbone", "mobilenet_v2", "--out", str(root / "run"),
                 "--cache-dir", str(root / "cache")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    served = ServeProcess([str(run), "--header-timeout", str(HEAD_SECONDS), "--max-streams", str(MAX_STREAMS)],
                          tmp_path_factory.mktemp("camera-log") / "serve.log")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def crops(shared_datasets) -> list[np.ndarray]:
    people = sorted(p for p in (shared_datasets / "celebrity_faces").iterdir() if p.is_dir())[:len(PLACES)]
    return [np.asarray(Image.open(max(p.glob("*.jpg"))).convert("RGB")) for p in people]


def scene(crops: list[np.ndarray], shift: float = 0.0, scale: float = 1.0):
    """The faces at PLACES moved right by `shift` pixels, the whole frame scaled by `scale`."""
    places = [(round((x + shift) * scale), round(y * scale), round(side * scale), angle)
              for x, y, side, angle in PLACES]
    return paste_faces(background(round(640 * scale), round(480 * scale), seed=7), crops, places)


@pytest.fixture(scope="module")
def frame(crops) -> tuple[bytes, list]:
    """A 320x240 JPEG with two faces, as the page sends, and where the faces are."""
    photo, truth = scene(crops, scale=0.5)
    return jpeg(photo), truth


def jpeg(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def stream_url(server: ServeProcess) -> str:
    return f"ws://{server.host}:{server.port}/api/stream"


@contextlib.contextmanager
def opened(server: ServeProcess, busy_seconds: float = 0, **kwargs):
    """A stream, its `ready` message read. `busy_seconds`: how long to try again while every slot is taken
    (the server frees a closed stream's slot a moment after it closes)."""
    deadline = time.monotonic() + busy_seconds
    while True:
        stream = contextlib.ExitStack()
        ws = stream.enter_context(connect(stream_url(server), open_timeout=10, **kwargs))
        try:
            ready = json.loads(ws.recv(timeout=10))
            break
        except ConnectionClosed as exc:
            stream.close()
            if exc.rcvd is None or exc.rcvd.code != 1013 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with stream:
        assert ready["type"] == "ready", ready
        ws.ready = ready
        yield ws


def reply(ws) -> dict:
    return json.loads(ws.recv(timeout=60))


def closed_with(ws, seconds: float = 30) -> tuple[int, str]:
    """Read until the server closes the stream (within `seconds` of the last message); its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(1000):
            ws.recv(timeout=seconds)
    assert closed.value.rcvd is not None, "the server did not send a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_stream_answers_each_frame_as_the_photo_api_does(server, frame):
    """As the photo API, plus each face's track and (the stream's first frame: nothing to smooth with yet)
    each run's raw answer equal to the smoothed one."""
    data, truth = frame
    expected = httpx.post(f"{server.url}/api/predict", files={"image": ("f.jpg", data, "image/jpeg")},
                          timeout=60).json()
    with opened(server) as ws:
        ws.send(data)
        answer = reply(ws)
        assert answer["type"] == "answer" and answer["frame"] == 1 and answer["dropped"] == 0
        assert set(answer["milliseconds"]) == {"queue", "decode", "detect", "classify"}
        for body in (answer, expected):
            del body["milliseconds"]
        assert sorted(face.pop("track") for face in answer["faces"]) == [1, 2]
        for face in answer["faces"]:
            for run_answer in face["runs"].values():
                assert run_answer.pop("raw") == run_answer
        assert {k: v for k, v in answer.items() if k not in ("type", "frame", "dropped", "seconds")} == expected
        assert (answer["width"], answer["height"]) == (320, 240) and len(answer["faces"]) == len(truth)
        found = [tuple(face["box"].values()) for face in answer["faces"]]
        assert all(max(box_iou(t.box, f) for f in found) > 0.5 for t in truth)
        time.sleep(HEAD_SECONDS + 0.5)  # the HTTP head clock must not close a stream that is open
        ws.send(data)
        assert reply(ws)["frame"] == 2


def test_a_frame_arriving_while_one_is_read_replaces_the_waiting_one(server, frame):
    """Eight frames sent at once: the first is read, the others replace each other while it is; the last
    is answered, and `dropped` counts the ones never read."""
    with opened(server) as ws:
        for _ in range(8):
            ws.send(frame[0])
        answered = []
        while not answered or answered[-1]["frame"] < 8:
            answered.append(reply(ws))
        numbers = [a["frame"] for a in answered]
        assert numbers[0] == 1 and numbers[-1] == 8 and len(numbers) <= 3, numbers
        assert numbers == sorted(numbers) and answered[-1]["dropped"] == 8 - len(numbers)


def test_bad_frames_are_error_messages_and_the_stream_goes_on(server, frame):
    with opened(server) as ws:
        ws.send(b"just some words, not a frame\n" * 20)
        error = reply(ws)
        assert error == {"type": "error", "frame": 1, "error": error["error"]} and "not an image" in error["error"]
        ws.send(frame[0][:3000])  # a truncated JPEG
        error = reply(ws)
        assert error["type"] == "error" and error["frame"] == 2 and "cannot read" in error["error"]
        ws.send("a text message")
        error = reply(ws)
        assert error["type"] == "error" and "binary" in error["error"]
        ws.send(frame[0])
        answer = reply(ws)
        assert answer["type"] == "answer" and answer["frame"] == 3 and answer["faces"]


def big_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case, code, words", [
    ("3 MiB", 1009, "exceeds limit"),                # over max_frame_bytes, 2 MiB
    ("5000x4000 pixels", 1009, "too large"),          # over max_frame_pixels, a 4K frame
    ("200 frames at once", 1008, "too many frames"),  # over 60 a second
])
def test_a_stream_that_goes_too_far_is_closed_with_a_code_and_a_reason(server, frame, case, code, words):
    with opened(server, max_size=None) as ws:
        if case == "3 MiB":
            try:
                ws.send(b"\xff" * (3 * 2**20))
            except (ConnectionResetError, ConnectionClosed):
                # the server judged the frame by its header and closed while the client was still sending it: the
                # kernel's reset of that unread upload can overtake the 1009 close frame (seen 2 in 3 times alone)
                got, reason = code, words
            else:
                got, reason = closed_with(ws)
        elif case == "5000x4000 pixels":
            ws.send(big_png(5000, 4000))
        else:
            for _ in range(200):
                ws.send(frame[0])
        if case != "3 MiB":
            got, reason = closed_with(ws)
    assert got == code and words in reason, (got, reason)
    with opened(server) as ws:  # and the next stream is served
        ws.send(frame[0])
        assert reply(ws)["type"] == "answer"


def test_too_many_streams_is_1013_and_a_freed_slot_is_taken_again(server, frame):
    with contextlib.ExitStack() as streams:
        first, *_ = [streams.enter_context(opened(server)) for _ in range(MAX_STREAMS)]
        with connect(stream_url(server), open_timeout=10) as extra:
            code, reason = closed_with(extra)
        assert code == 1013 and "try again later" in reason and f"at most {MAX_STREAMS}" in reason
        first.close()
        with opened(server, busy_seconds=5) as again:
            again.send(frame[0])
            assert reply(again)["type"] == "answer"


def test_pages_of_other_origins_and_other_hosts_cannot_open_a_stream(server):
    """Browsers let any page open a WebSocket to 127.0.0.1: the Origin says whose page it is."""
    for origin in ("http://evil.example", f"http://evil.example:{server.port}"):
        with pytest.raises(InvalidStatus) as refused, connect(stream_url(server), origin=origin, open_timeout=10):
            pass
        response = refused.value.response
        assert response.status_code == 403 and "allowed-hosts" in json.loads(response.body)["error"]
    with pytest.raises(InvalidStatus) as refused, connect(stream_url(server), open_timeout=10,
                                                          additional_headers={"Host": "evil.example"}):
        pass
    assert refused.value.response.status_code == 400
    with opened(server, origin=f"http://localhost:{server.port}"):
        pass


def handshake(server: ServeProcess) -> socket.socket:
    """A WebSocket opened by hand (its ready message read), to send broken frames the client would not.
    A stream just abandoned may hold its slot a moment longer: a 1013 (busy) is tried again."""
    deadline = time.monotonic() + 10
    while True:
        sock = server.connect()
        sock.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        received = b""
        while b"ready" not in received and b"busy" not in received:
            piece = sock.recv(65536)
            assert piece, received
            received += piece
        assert received.startswith(b"HTTP/1.1 101"), received[:200]
        if b"ready" in received:
            return sock
        sock.close()
        assert time.monotonic() < deadline, "the abandoned streams' slots were not freed"
        time.sleep(0.1)


def masked_binary_header(length: int) -> bytes:
    """The head of one masked binary frame of `length` bytes (mask 0: the payload is sent as is)."""
    return struct.pack("!BBQ", 0x82, 0x80 | 127, length) + b"\0\0\0\0"


def test_clients_gone_mid_frame_leave_the_server_working(server, frame):
    data = frame[0]
    # gone while its frame is read
    sock = handshake(server)
    sock.sendall(masked_binary_header(len(data)) + data)
    sock.close()
    # gone halfway through sending a frame
    sock = handshake(server)
    sock.sendall(masked_binary_header(len(data)) + data[:len(data) // 2])
    sock.close()
    # reset (RST, not FIN) in the middle of a frame
    sock = handshake(server)
    sock.sendall(masked_binary_header(len(data)) + data[:100])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    with contextlib.ExitStack() as streams:  # every slot is free again
        for ws in [streams.enter_context(opened(server, busy_seconds=5)) for _ in range(MAX_STREAMS)]:
            ws.send(data)
            answer = reply(ws)
            assert answer["type"] == "answer" and answer["frame"] == 1 and len(answer["faces"]) == 2
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    """Raw video as chromium's fake camera reads it: YUV4MPEG2, 4:2:0, BT.601 full range (as JPEG)."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            planes = (0.299 * r + 0.587 * g + 0.114 * b,
                      -0.168736 * r - 0.331264 * g + 0.5 * b + 128, 0.5 * r - 0.418688 * g - 0.081312 * b + 128)
            out.write(b"FRAME\n" + planes[0].clip(0, 255).round().astype(np.uint8).tobytes())
            for chroma in planes[1:]:  # averaged over each 2x2 block
                half = chroma.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
                out.write(half.clip(0, 255).round().astype(np.uint8).tobytes())


def test_the_page_reads_a_camera_in_a_real_browser(server, crops, tmp_path):
    """chromium's fake camera plays a clip of two faces swaying 12 px either way; the page draws the server's
    boxes on the video and counts answers a second and latency."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip, truths = tmp_path / "clip.y4m", []
    frames = []
    for i in range(30):
        photo, truth = scene(crops, shift=12 * np.sin(2 * np.pi * i / 30))
        frames.append(photo)
        truths.append(truth)
    write_y4m(clip, frames)
    driver = headless_chromium("--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
                               "--use-fake-ui-for-media-stream")
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".model"))
        driver.find_element(By.ID, "mode-camera").click()
        driver.find_element(By.ID, "camera-toggle").click()
        wait.until(lambda d: int(page_now(d)["answers"]) >= 1)
        first = page_now(driver)
        time.sleep(3)
        last = page_now(driver)
        assert not driver.find_element(By.ID, "error").is_displayed(), driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
    answers = (int(last["answers"]) - int(first["answers"])) / (last["now"] - first["now"]) * 1000
    assert last["size"] == "320x240" and len(last["boxes"]) == len(PLACES), last
    found = [tuple(2 * float(v) for v in box["box"].split(",")) for box in last["boxes"]]  # in the clip's pixels
    for truth in zip(*truths):  # each face, wherever it was in the loop
        assert max(box_iou(t.box, f) for t in truth for f in found) > 0.6, (truth[0].box, found)
    for box in last["boxes"]:
        labels = json.loads(box["labels"])
        assert set(labels) == {"run"} and labels["run"] in ("no smile", "smile") and labels["run"] in box["text"]
    fps, p95 = float(last["fps"]), float(last["p95"])
    print(f"camera mode: {answers:.1f} answers/s counted, panel {fps:.1f}/s, p95 {p95:.0f} ms")
    assert min(answers, fps) >= MIN_ANSWERS_PER_SECOND and p95 <= MAX_P95_MS, (answers, fps, p95)


def page_now(driver) -> dict:
    """What the page shows at one moment (the boxes are redrawn with every answer): the panel's figures,
    the answered frame's size, and each box with its labels and text."""
    return driver.execute_script("""
        const panel = document.getElementById("camera-stats").dataset;
        return {now: performance.now(), answers: panel.answers, fps: panel.fps, p95: panel.p95,
                size: document.getElementById("live").dataset.size,
                boxes: [...document.querySelectorAll("#live .face-box")].map((b) => (
                    {box: b.dataset.box, labels: b.dataset.labels, text: b.querySelector(".face-label").innerText}))};
    """)


@pytest.mark.slow
def test_an_idle_stream_is_closed_with_1008_and_its_slot_freed(server, frame):
    """30 s without a frame (StreamLimits.idle_seconds): a forgotten stream does not hold a slot for ever."""
    with contextlib.ExitStack() as streams:
        idle = [streams.enter_context(opened(server)) for _ in range(MAX_STREAMS)]
        started = time.monotonic()
        code, reason = closed_with(idle[0], seconds=45)
        assert code == 1008 and "idle" in reason and 29 < time.monotonic() - started < 40
    with opened(server) as ws:
        ws.send(frame[0])
        assert reply(ws)["type"] == "answer"


def test_text_messages_are_rate_limited_as_frames_are(server, frame):
    """Issue 29: a text message is answered (an error), so a flood of them cost the server as frames do."""
    with opened(server) as ws:
        for _ in range(200):
            ws.send("not a frame")
        code, reason = closed_with(ws)
    assert code == 1008 and "too many" in reason, (code, reason)
    with opened(server) as ws:
        ws.send(frame[0])
        assert reply(ws)["type"] == "answer"


@pytest.mark.slow
def test_a_stream_sending_only_text_is_closed_as_idle_and_its_slot_freed(server, frame):
    """Issue 29: a client that sends a text message every 2 s, and never a frame, held its slot for ever."""
    with opened(server) as ws:
        started, closed = time.monotonic(), None
        while closed is None and time.monotonic() - started < 60:
            try:
                ws.send("still here")
                assert reply(ws)["type"] == "error"
                time.sleep(2)
            except ConnectionClosed as exc:
                closed = exc.rcvd
        assert closed is not None and closed.code == 1008 and "idle" in closed.reason, closed
        assert 29 < time.monotonic() - started < 40
    with contextlib.ExitStack() as streams:  # every slot can be taken again
        for ws in [streams.enter_context(opened(server, busy_seconds=5)) for _ in range(MAX_STREAMS)]:
            ws.send(frame[0])
            assert reply(ws)["type"] == "answer"


def noisy(photo: np.ndarray, rng: np.random.Generator, sigma: float = 10.0) -> np.ndarray:
    """The photo as a cheap camera gives it: independent noise on every pixel of every frame."""
    return np.clip(photo + rng.normal(0.0, sigma, photo.shape), 0, 255).astype(np.uint8)


def face_at(answer: dict, truth) -> dict:
    """The answer's face that is the pasted face `truth`."""
    face = max(answer["faces"], key=lambda f: box_iou(truth.box, tuple(f["box"].values())))
    assert box_iou(truth.box, tuple(face["box"].values())) > 0.5, (truth.box, answer["faces"])
    return face


def test_a_face_keeps_its_track_and_its_label_follows_the_moving_average_of_its_frames(server, crops):
    """Issue 32: a stream smooths as `predict --smooth` smooths a video (docs/video.md): a frame `dt` seconds
    after the face's last moves each probability 1 - exp(-dt / S) of the way to the frame's own, and the
    label is the run's decision on the result; each face keeps its track while it moves and the frames jitter."""
    rng = np.random.default_rng(3)
    answers, truths = [], []
    with opened(server) as ws:
        assert ws.ready["smooth_seconds"] == SMOOTH
        for shift in (0, 5, -5, 9, -3, 6, 0, -7):
            photo, truth = scene(crops, shift=shift, scale=0.5)
            ws.send(jpeg(noisy(photo, rng)))
            answers.append(reply(ws))
            truths.append(truth)
            time.sleep(rng.uniform(0.0, 0.4))
    tracks = [[face_at(answer, face)["track"] for face in truth] for answer, truth in zip(answers, truths)]
    assert all(row == tracks[0] for row in tracks) and len(set(tracks[0])) == len(PLACES), tracks
    times = [answer["seconds"] for answer in answers]
    assert times == sorted(times) and times[-1] - times[0] > 0.5, times
    moved = 0.0
    for k in range(len(PLACES)):
        smoothed, last = None, None
        for answer, truth, time_s in zip(answers, truths, times):
            run = face_at(answer, truth[k])["runs"]["run"]
            raw = np.array(list(run["raw"]["probabilities"].values()))
            weight = 0.0 if last is None else 1 - math.exp(-(time_s - last) / SMOOTH)
            smoothed = raw if smoothed is None else smoothed + weight * (raw - smoothed)
            last = time_s
            assert np.allclose(list(run["probabilities"].values()), smoothed, atol=2e-6), (run, smoothed)
            label = int(np.argmax(smoothed))  # the run's threshold is 0.5
            assert run["label"] == list(run["probabilities"])[label]
            assert run["probability"] == run["probabilities"][run["label"]]
            assert run["raw"]["label"] == list(run["probabilities"])[int(np.argmax(raw))]
            moved = max(moved, float(np.abs(smoothed - raw).max()))
    assert moved > 0.01, "every frame gave the same answer: nothing showed the smoothing"


def test_smooth_0_gives_each_frames_own_answer_and_still_tracks(run, crops, tmp_path):
    """serve --smooth 0: the labels a stream gives are each frame's own, as before smoothing; tracks stay."""
    served = ServeProcess([str(run), "--smooth", "0"], tmp_path / "serve.log")
    rng = np.random.default_rng(5)
    try:
        with opened(served) as ws:
            assert ws.ready["smooth_seconds"] == 0
            answers = []
            for shift in (0, 6, -6, 3):
                ws.send(jpeg(noisy(scene(crops, shift=shift, scale=0.5)[0], rng)))
                answers.append(reply(ws))
    finally:
        served.stop()
    assert all(sorted(face["track"] for face in answer["faces"]) == [1, 2] for answer in answers), answers
    for face in (face for answer in answers for face in answer["faces"]):
        run_answer = face["runs"]["run"]
        assert run_answer.pop("raw") == run_answer


@pytest.fixture(scope="module")
def flicker(crops) -> list[np.ndarray]:
    """Two faces that do not move under per-frame camera noise (60 frames, 2 s at 30 fps): nothing about
    them changes, so neither should their labels."""
    rng = np.random.default_rng(11)
    photo, _ = scene(crops)
    return [noisy(photo, rng) for _ in range(60)]


@pytest.fixture(scope="module")
def borderline_server(run, flicker, tmp_path_factory):
    """The run with its threshold moved to the 25th percentile of its p(smile) for the faces of the clip (as
    the server reads them at the page's 320x240): each face is near the decision, so its raw label flickers
    with the noise. Served with the default --smooth."""
    import torch

    from facetl.runtime import Runtime
    from facetl.serve.reader import PhotoReader
    from facetl.serve.runs import open_runs

    reader = PhotoReader(open_runs([str(run)], "torch", Runtime.for_inference("cpu", "auto"), 1))
    smile = [face.runs["run"].probabilities["smile"] for photo in flicker[::3]
             for face in reader.read(np.asarray(Image.fromarray(photo).resize((320, 240)))).faces]
    threshold = float(np.percentile(smile, 25))
    folder = tmp_path_factory.mktemp("borderline") / "run"
    shutil.copytree(run, folder)
    checkpoint = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    checkpoint["record"]["threshold"] = threshold
    torch.save(checkpoint, folder / "best.pt")
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "threshold": threshold}))
    served = ServeProcess([str(folder)], tmp_path_factory.mktemp("borderline-log") / "serve.log")
    yield served
    served.stop()


def test_the_page_shows_smoothed_labels_that_flip_less_than_each_frames_own(borderline_server, flicker, tmp_path):
    """Issue 32: the page in chromium, its fake camera playing two still faces under camera noise, each
    near the run's threshold. Every answer the page draws is recorded from the DOM: per face (its track),
    the label shown and the frame's own. The shown labels, smoothed over time, flip far less."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "flicker.y4m"
    write_y4m(clip, flicker)
    driver = headless_chromium("--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
                               "--use-fake-ui-for-media-stream")
    try:
        driver.get(borderline_server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".model"))
        driver.execute_script("""
            window.drawn = [];
            new MutationObserver(() => window.drawn.push([...document.querySelectorAll("#live .face-box")].map(
                (b) => [b.dataset.track, JSON.parse(b.dataset.labels).run, JSON.parse(b.dataset.rawLabels).run])))
              .observe(document.getElementById("live"), {childList: true});""")
        driver.find_element(By.ID, "mode-camera").click()
        driver.find_element(By.ID, "camera-toggle").click()
        wait.until(lambda d: int(page_now(d)["answers"]) >= 1)
        time.sleep(12)
        drawn = driver.execute_script("return window.drawn;")
        status = driver.find_element(By.ID, "status").text
        assert not driver.find_element(By.ID, "error").is_displayed(), driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
    assert f"smoothed over {SMOOTH} s" in status, status
    flips, last, answers = {"shown": 0, "raw": 0}, {}, {}
    for boxes in drawn:
        for track, shown, raw in boxes:
            if track in last:
                flips["shown"] += shown != last[track][0]
                flips["raw"] += raw != last[track][1]
            last[track] = (shown, raw)
            answers[track] = answers.get(track, 0) + 1
    print(f"camera smoothing: {answers} answers per track, label flips {flips}")
    assert len(answers) == len(PLACES) and min(answers.values()) >= 20, answers  # each face kept its track
    assert flips["raw"] >= 8, f"the clip did not make the raw labels flicker: {flips}"
    assert flips["shown"] <= flips["raw"] / 2, flips


def test_sigterm_with_a_stream_open_closes_it_with_1012_and_exits_0(server, frame):
    """Last in the file: it stops the module's server. Nothing it served was a traceback."""
    with opened(server) as ws:
        ws.send(frame[0])
        assert reply(ws)["type"] == "answer"
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10
        code, _ = closed_with(ws)
    assert code == 1012
    log = server.log.read_text()
    assert "facetl serve: stopped" in log and "Traceback" not in log and "Exception" not in log, log[-3000:]
