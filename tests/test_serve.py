"""`facetl serve`: a real uvicorn process on a loopback port, two tiny real runs, real photos, and a real
browser (Debian's chromium through Selenium; skipped with the reason when it is missing).

The runs are trained once for the module on face crops (a smile run at 64 px on SMILEsmileD, a gender
run at 48 px on celebrity_faces), so the server detects faces once and aligns them at two sizes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commandline import ServeProcess, headless_chromium
from facetl.cli import main
from facetl.data.faces.composite import background, box_iou, paste_faces
from facetl.data.folders import find_images
from facetl.data.images import photo_from_bytes, read_photo

httpx = pytest.importorskip("httpx", reason="httpx is needed to talk to the server (pip install httpx)")

UPLOAD_MB = 1  # the module's server refuses bodies over 1 MiB, so "too big" is cheap to send
ASTRONAUT_FACE = (180.0, 60.0, 89.0, 114.0)  # x, y, w, h of her face (MTCNN's box, checked by eye)


def linked(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        (folder / f"{i:03d}{f.suffix}").symlink_to(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_datasets) -> dict[str, Path]:
    """smile: MobileNetV2 at 64 px on 80 SMILEsmileD crops; gender: at 48 px on 80 celebrity crops."""
    smiles, celebrities = shared_datasets / "SMILEsmileD" / "SMILEs", shared_datasets / "celebrity_faces"
    table = shared_datasets / "celebrity_faces_attributes.csv"
    if not smiles.is_dir() or not celebrities.is_dir() or not table.is_file():
        pytest.skip(f"SMILEsmileD/SMILEs, celebrity_faces or its attribute table not found in {shared_datasets}")
    root, cache = tmp_path_factory.mktemp("serve-runs"), tmp_path_factory.mktemp("serve-cache")
    # class folders with readable names: the page shows them
    linked(find_images(smiles / "negatives")[::97][:40], root / "data-smile" / "no smile")
    linked(find_images(smiles / "positives")[::37][:40], root / "data-smile" / "smile")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for name, value in (("man", "1"), ("woman", "-1")):
        linked([celebrities / r["filename"] for r in rows if r["Male"] == value][::5][:40],
               root / "data-gender" / name)
    out = {}
    for name, size in (("smile", 64), ("gender", 48)):
        out[name] = root / name
        assert main(["train", "--data", str(root / f"data-{name}"), "--weights", "none", "--img-size", str(size),
                     "--epochs", "1", "--strategy", "last-block", "--backbone", "mobilenet_v2", "--out",
                     str(out[name]), "--cache-dir", str(cache)]) == 0
    return out


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """Both runs at once, with a 1 MiB upload limit."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    served = ServeProcess([str(runs["smile"]), str(runs["gender"]), "--max-upload-mb", str(UPLOAD_MB)], log)
    yield served
    served.stop()


def encoded(photo: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    from skimage import data

    return encoded(data.astronaut())


@pytest.fixture(scope="module")
def group(shared_datasets):
    """Three celebrities pasted at known places on a 760x480 background."""
    people = sorted(p for p in (shared_datasets / "celebrity_faces").iterdir() if p.is_dir())[:3]
    crops = [np.asarray(Image.open(max(p.glob("*.jpg"))).convert("RGB")) for p in people]
    photo, truth = paste_faces(background(760, 480, seed=5), crops,
                               [(150, 160, 170, 4.0), (420, 160, 120, -5.0), (620, 330, 110, 2.0)])
    return encoded(photo), truth


def predict(server: ServeProcess, data: bytes, name: str = "photo.jpg", **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/api/predict", files={"image": (name, data, "image/jpeg")}, timeout=60, **kwargs)


def check_answers(face: dict, runs: dict[str, Path]) -> None:
    assert set(face["runs"]) == set(runs)
    for answer in face["runs"].values():
        probs = answer["probabilities"]
        assert abs(sum(probs.values()) - 1) < 1e-4
        assert answer["label"] == max(probs, key=probs.get) and answer["probability"] == probs[answer["label"]]


def test_one_face_in_a_real_photo_with_both_runs_answers(server, astronaut, runs):
    response = predict(server, astronaut)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (512, 512)
    [face] = body["faces"]
    box = face["box"]
    assert box_iou((box["x"], box["y"], box["w"], box["h"]), ASTRONAUT_FACE) > 0.7
    assert face["score"] > 0.95 and set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left",
                                                               "mouth_right"}
    check_answers(face, runs)
    assert set(face["runs"]["smile"]["probabilities"]) == {"no smile", "smile"}
    assert set(face["runs"]["gender"]["probabilities"]) == {"man", "woman"}
    assert set(body["milliseconds"]) == {"decode", "queue", "detect", "classify"}


def test_several_faces_each_with_every_answer_and_no_face_is_an_empty_list(server, group, runs):
    data, truth = group
    body = predict(server, data).json()
    assert len(body["faces"]) == 3
    for face in body["faces"]:
        check_answers(face, runs)
    found = [(f["box"]["x"], f["box"]["y"], f["box"]["w"], f["box"]["h"]) for f in body["faces"]]
    assert all(max(box_iou(t.box, f) for f in found) > 0.5 for t in truth)
    empty = predict(server, encoded(background(640, 480, seed=3), "PNG"), "wall.png").json()
    assert empty["faces"] == [] and (empty["width"], empty["height"]) == (640, 480)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with one tiny data chunk: a few dozen bytes
    on disk that a careless decoder would inflate to gigabytes."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def multipart(data: bytes, field: str = "image", boundary: str = "facetl-test") -> tuple[bytes, dict]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def raw_request(server: ServeProcess, head: str, body_chunks: list[bytes]) -> tuple[int, dict]:
    """Send a hand-written request (what httpx would not send), then read the status and the JSON body."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:  # the server closed with our unread bytes; its answer came first
                break
            if not piece:
                break
            reply += piece
    assert reply, "no answer from the server"
    head_part, _, body = reply.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(body[:_length(reply)])


def _length(reply: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", reply, re.IGNORECASE)
    return int(found.group(1)) if found else 0


def test_bad_requests_are_one_json_error_each(server, astronaut, tmp_path):
    url = f"{server.url}/api/predict"
    cases = {
        "too big": (413, lambda: predict(server, astronaut + os.urandom(UPLOAD_MB * 2**20))),
        "text named x.jpg": (415, lambda: predict(server, b"just some words, not a photo\n" * 20, "x.jpg")),
        "header claims 30000x30000": (413, lambda: predict(server, png_header_only(30000, 30000), "bomb.png")),
        "header claims 9000x8000": (413, lambda: predict(server, png_header_only(9000, 8000), "bomb.png")),
        "truncated JPEG": (422, lambda: predict(server, astronaut[:3000])),
        "empty field": (422, lambda: predict(server, b"")),
        "missing field": (422, lambda: httpx.post(url, files={"photo": ("a.jpg", astronaut)}, timeout=30)),
        "not multipart": (415, lambda: httpx.post(url, content=astronaut, headers={"content-type": "image/jpeg"})),
        "unknown path": (404, lambda: httpx.get(f"{server.url}/api/nothing")),
        "wrong method": (405, lambda: httpx.get(url)),
    }
    for case, (status, send) in cases.items():
        response = send()
        assert response.status_code == status, (case, response.text)
        assert response.headers["content-type"] == "application/json", case
        assert set(response.json()) == {"error"} and response.json()["error"], case
    assert "image" in cases["missing field"][1]().json()["error"]


def test_size_is_capped_by_counting_bytes_not_only_by_content_length(server, astronaut):
    """A Content-Length over the limit is refused before the body is read; a chunked body (no length) is
    refused once more than the limit has arrived."""
    body, headers = multipart(astronaut + os.urandom(UPLOAD_MB * 2**20))
    status, reply = raw_request(server, f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                        f"{headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n", [])
    assert status == 413 and "too large" in reply["error"]
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    status, reply = raw_request(server, f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                        f"{headers['content-type']}\r\nTransfer-Encoding: chunked\r\n\r\n", chunked)
    assert status == 413 and "too large" in reply["error"]
    ok = predict(server, astronaut)  # and the server is still fine
    assert ok.status_code == 200


def test_concurrent_requests_all_get_the_same_answers(server, astronaut, group):
    photos = [astronaut, group[0]] * 4

    def answer(data: bytes) -> dict:
        response = predict(server, data)
        assert response.status_code == 200, response.text
        body = response.json()
        del body["milliseconds"]
        return body

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(answer, photos))
    assert all(a == answers[0] for a in answers[0::2]) and all(a == answers[1] for a in answers[1::2])
    assert len(answers[0]["faces"]) == 1 and len(answers[1]["faces"]) == 3


def test_model_cards_health_and_api_description(server, runs):
    cards = httpx.get(f"{server.url}/api/models").json()
    assert [c["name"] for c in cards] == ["smile", "gender"]
    smile = cards[0]
    assert smile["backbone"] == "mobilenet_v2" and smile["classes"] == ["no smile", "smile"]
    assert smile["image_size"] == 64 and cards[1]["image_size"] == 48 and smile["pretraining"] == "no pretraining"
    metrics = json.loads((runs["smile"] / "metrics.json").read_text())
    assert smile["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"]) and smile["trained"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "runs": ["smile", "gender"], "waiting": 0}
    api = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/api/predict", "/api/models", "/healthz"} <= set(api["paths"])
    assert httpx.get(f"{server.url}/docs").status_code == 404  # Swagger's page needs a CDN: switched off
    page = httpx.get(server.url)
    assert page.status_code == 200 and "<script" in page.text and "http" not in page.headers[
        "content-security-policy"] and not re.search(r"(src|href)=\"https?://", page.text)


def test_page_in_a_real_browser(server, astronaut, tmp_path):
    driver = headless_chromium("--hide-scrollbars", window="1280,860")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut)
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".model")) == 2)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#faces tbody tr"))
        label = driver.find_element(By.CSS_SELECTOR, ".face-box .face-label").text
        assert "smile" in label and "gender" in label and re.search(r"\d%", label)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".face-box")) == 1
        row = driver.find_element(By.CSS_SELECTOR, "#faces tbody tr").text
        assert re.search(r"\d%", row) and "1.000" in row
        assert "Could not" not in driver.find_element(By.ID, "tagline").text
        assert not driver.find_element(By.ID, "error").is_displayed()
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        # a phone: one column, nothing wider than the screen (headless windows cannot be narrower than 500 px)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 400, "height": 860, "deviceScaleFactor": 1, "mobile": True})
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 400
        driver.save_screenshot(str(tmp_path / "serve-phone.png"))
        if os.environ.get("FACETL_SCREENSHOT"):
            _readme_screenshot(shot, Path(__file__).resolve().parents[1] / "docs" / "serve.png")
    finally:
        driver.quit()


def test_labels_stay_inside_a_photo_whose_faces_fill_its_height(server, shared_datasets, tmp_path):
    """Three celebrity_faces photos side by side, as docs/serve-group.png: a face as tall as the photo has room
    neither above nor below its box, so its label goes inside it instead of over the status line."""
    people = sorted(p for p in (shared_datasets / "celebrity_faces").iterdir() if p.is_dir())[:3]
    tiles = [Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB").resize((250, 320)) for p in people]
    canvas = Image.new("RGB", (810, 340), (236, 232, 226))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (10 + 270 * i, 10))
    photo = tmp_path / "group.jpg"
    canvas.save(photo, quality=95)
    driver = headless_chromium("--hide-scrollbars", window="1280,860")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".model")) == 2)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: "faces in group.jpg" in d.find_element(By.ID, "status").text)
        time.sleep(0.5)  # the image's load places the labels again
        frame, status, labels = driver.execute_script(
            "const r = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };"
            "return [r(document.getElementById('photo')), r(document.getElementById('status')),"
            " [...document.querySelectorAll('#photo .face-label')].map(r)];")
        driver.save_screenshot(str(tmp_path / "group.png"))
    finally:
        driver.quit()
    assert len(labels) == 3
    for left, top, right, bottom in labels:
        assert frame[0] <= left and right <= frame[2] and frame[1] <= top and bottom <= frame[3], (labels, frame)
        assert bottom <= status[1], "a label covers the status line"


def _readme_screenshot(shot: Path, target: Path) -> None:
    """1000 px wide, 256 colours: small enough for the repository (under 200 KB)."""
    image = Image.open(shot).convert("RGB")
    image = image.resize((1000, round(image.height * 1000 / image.width)), Image.LANCZOS)
    target.parent.mkdir(exist_ok=True)
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "run not found"),
    (["{empty}"], "no best.pt"),
    (["{smile}", "--engine", "onnx"], "model.onnx not found"),
    (["{smile}", "--max-upload-mb", "0"], "--max-upload-mb must be"),
    (["{smile}", "--max-upload-mb", "-3"], "--max-upload-mb must be"),
    (["{smile}", "--max-upload-mb", "lots"], "invalid float value"),
    (["{smile}", "--port", "70000"], "--port: 70000 is out of range (0 to 65535)"),
    (["{smile}", "--port", "{busy}"], "cannot listen on"),
    (["{smile}", "--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000"),  # not this machine's address
])
def test_bad_command_lines_are_one_line_and_exit_2(runs, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"missing": tmp_path / "nothing", "empty": tmp_path / "empty", "smile": runs["smile"],
                  "busy": busy.getsockname()[1]}
        try:
            code = main(["serve", *[a.format(**values) for a in args]])
        except SystemExit as exc:  # argparse's own one line, for a value that is not a number
            code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("facetl serve: error:"), err
    assert message in err and "Traceback" not in err


def test_photo_from_bytes_reads_as_read_photo_does(tmp_path, astronaut):
    """EXIF rotation included: the upload path and the file path give the same pixels."""
    from skimage import data

    image = Image.fromarray(data.astronaut()[:, :300])
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    (tmp_path / "rotated.jpg").write_bytes(buffer.getvalue())
    upright = photo_from_bytes(buffer.getvalue())
    assert upright.shape == (300, 512, 3)
    assert np.array_equal(upright, read_photo(tmp_path / "rotated.jpg"))


class RecordingClassifier:
    """A stand-in run trained with --faces detect at 48 px: it keeps the crops it is shown."""

    def __init__(self, landmarks: str, size: int = 48, template: str = "arcface"):
        from facetl.preprocessing import FaceAlignment, Preprocessing

        from facetl.inference.decision import Decision

        self.preprocessing = Preprocessing(size, (0.5,) * 3, (0.5,) * 3,
                                           faces=FaceAlignment(landmarks=landmarks, template=template))
        self.class_names, self.crops = ["no", "yes"], []
        self.title, self.decision = "recording", Decision(self.class_names, 0.5)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        self.crops.append(crops.copy())
        return np.full((len(crops), 2), 0.5, dtype=np.float32)


@pytest.mark.parametrize("order", [("refined", "detector"), ("detector", "refined")])
def test_runs_with_different_landmarks_each_get_the_crop_predict_would_cut(order):
    """Two runs of one size, one aligned with refined landmarks and one with the detector's: each is shown
    exactly the crop `facetl predict` cuts for it, not the other run's."""
    from types import SimpleNamespace

    from skimage import data

    from facetl.data.faces import create_detector, faces_in_photo
    from facetl.serve.reader import PhotoReader
    from facetl.serve.runs import ServedRun

    photo = data.astronaut()
    classifiers = [RecordingClassifier(landmarks) for landmarks in order]
    reader = PhotoReader([ServedRun(SimpleNamespace(name=name), c) for name, c in zip(order, classifiers)])
    [face] = reader.read(photo).faces
    detector = create_detector("mtcnn")
    expected = {c.preprocessing.faces.landmarks: faces_in_photo(photo, c.preprocessing.faces, 48, multi_face="all",
                                                                detector=detector).used[0] for c in classifiers}
    for landmarks, classifier in zip(order, classifiers):
        [[crop]] = classifier.crops
        assert np.array_equal(crop, expected[landmarks].crop), f"the {landmarks} run got another crop"
    assert not np.array_equal(*(c.crops[0][0] for c in classifiers))  # the landmarks do move the crop
    shown = np.array([face.landmarks[name] for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")])
    assert np.allclose(shown, expected[order[0]].face.landmarks, atol=0.051)  # the first run's, as answered


def test_sigterm_stops_the_server_promptly_with_exit_code_0(server):
    """Last in the file: it stops the module's server. Nothing it served was a 500 or a traceback."""
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    log = server.log.read_text()
    assert "facetl serve: stopped" in log and "Traceback" not in log and '" 500' not in log, log


def test_runs_with_different_framings_each_get_the_crop_predict_would_cut():
    """A FER-like run (the face box), a dlib-like run (dlib's chip) and an ArcFace run served together: each is
    shown the crop `facetl predict` cuts for it."""
    from types import SimpleNamespace

    from skimage import data

    from facetl.data.faces import create_detector, faces_in_photo
    from facetl.serve.reader import PhotoReader
    from facetl.serve.runs import ServedRun

    photo = data.astronaut()
    templates = ("arcface", "box", "dlib")
    classifiers = [RecordingClassifier("refined", template=template) for template in templates]
    reader = PhotoReader([ServedRun(SimpleNamespace(name=name), c) for name, c in zip(templates, classifiers)])
    [face] = reader.read(photo).faces
    detector = create_detector("mtcnn")
    crops = []
    for classifier in classifiers:
        expected = faces_in_photo(photo, classifier.preprocessing.faces, 48, multi_face="all", detector=detector)
        [[crop]] = classifier.crops
        assert np.array_equal(crop, expected.used[0].crop), f"the {classifier.preprocessing.faces.template} run"
        crops.append(crop.astype(int))
    assert all(np.abs(a - b).mean() > 5 for i, a in enumerate(crops) for b in crops[i + 1:])  # three cuts
