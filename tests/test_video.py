"""`facetl predict RUN clip.mp4`: a real MP4 made here (celebrity faces drifting over a background, each
face's box and person known by construction), read back through the command as a user would.

Bad input (not a video, no frames, huge frames, no PyAV) is refused before the run is opened: those tests
are quick and run in CI. The others train a tiny run and read a real clip (about a minute): marked slow, run
by `make test-all`. The accuracy and label-flip figures of a trained run (smoothed against raw, video
against photo by photo) are in benchmarks/bench_video.py: a classifier good enough for them takes minutes
to train.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.commandline import ENV, facetl, in_process, one_line_error

av = pytest.importorskip("av")

from facetl.cli import main  # noqa: E402
from facetl.data.faces.composite import box_iou, moving_faces  # noqa: E402
from facetl.data.video import VideoWriter  # noqa: E402

PEOPLE = {"man": 1, "woman": 7}   # which crop of each class folder appears in the clip


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def faces_data(tmp_path_factory, shared_datasets) -> Path:
    """Two class folders (man, woman) of 12 celebrity_faces crops each, for a tiny run."""
    table = shared_datasets / "celebrity_faces_attributes.csv"
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    root = tmp_path_factory.mktemp("faces") / "gender"
    for name, value in (("man", "1"), ("woman", "-1")):
        (root / name).mkdir(parents=True)
        for i, r in enumerate([r for r in rows if r["Male"] == value][::150][:12]):
            Image.open(shared_datasets / "celebrity_faces" / r["filename"]).save(root / name / f"{i:02d}.jpg")
    return root


@pytest.fixture(scope="module")
def run(faces_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "gender"
    assert main(["train", "--data", str(faces_data), "--weights", "none", "--img-size", "32", "--epochs", "1", "--strategy", "full",
                 "--out", str(out), "--cache-dir", str(tmp_path_factory.mktemp("cache"))]) == 0
    return out


@pytest.fixture(scope="module")
def clip(faces_data, tmp_path_factory) -> tuple[Path, list[list[tuple]], list[str]]:
    """clip.mp4 (640x480, 25 fps, 30 frames), each frame's true face boxes, and each face's class."""
    names = list(PEOPLE)
    crops = [np.asarray(Image.open(faces_data / n / f"{PEOPLE[n]:02d}.jpg").convert("RGB")) for n in names]
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    truth = []
    with VideoWriter(path, 640, 480, 25) as writer:
        for frame, faces in moving_faces(crops, 640, 480, 30, seed=3, speed=6.0):
            writer.write(frame)
            truth.append([f.box for f in faces])
    return path, truth, names


def matched(rows: list[dict], truth: list[list[tuple]]) -> dict[int, list[tuple[int, dict]]]:
    """Per true face, (frame, the row whose box overlaps it by IoU >= 0.5) for every frame it was found in."""
    found: dict[int, list[tuple[int, dict]]] = {}
    for r in rows:
        frame = int(r["frame"])
        box = tuple(float(r[k]) for k in "xywh")
        overlaps = [box_iou(box, true) for true in truth[frame]]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= 0.5:
            found.setdefault(best, []).append((frame, r))
    return found


@pytest.mark.slow
def test_a_video_gives_a_row_per_face_per_frame_with_steady_tracks(run, clip, tmp_path, capsys):
    path, truth, names = clip
    out, annotated = tmp_path / "frames.csv", tmp_path / "annotated"
    result = in_process(capsys, "predict", str(run), str(path), "--out", str(out), "--annotate", str(annotated))
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    assert list(rows[0])[:13] == ["path", "frame", "time_s", "track", "x", "y", "w", "h", "detection_score",
                                  "label", "probability", "raw_label", "p_man"]
    assert list(rows[0])[13:] == ["p_woman"]
    assert {r["label"] for r in rows} <= {"man", "woman"} and all(r["label"] == r["raw_label"] for r in rows)
    assert float(rows[-1]["time_s"]) == pytest.approx(29 / 25, abs=1e-3)
    found = matched(rows, truth)
    assert len(rows) == sum(len(v) for v in found.values())  # no row for anything but the two faces
    for face, hits in found.items():
        assert len(hits) >= 0.9 * len(truth), f"face {face} found in only {len(hits)} of {len(truth)} frames"
        tracks = Counter(r["track"] for _, r in hits)
        assert tracks.most_common(1)[0][1] >= 0.95 * len(hits), tracks
    tracks = read_csv(tmp_path / "frames.tracks.csv")
    assert {t["track"] for t in tracks} == {r["track"] for r in rows}
    assert all(float(t["share_man"]) + float(t["share_woman"]) == pytest.approx(1.0, abs=2e-3) for t in tracks)
    assert "track 1:" in result.stdout and "frames" in result.stdout

    with av.open(str(annotated / "clip.annotated.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.format.name == "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(stream)]
    assert len(frames) == 30 and frames[0].shape == (480, 640, 3)
    with av.open(str(path)) as video:
        original = next(video.decode(video=0)).to_ndarray(format="rgb24")
    box = [float(rows[0][k]) for k in "xywh"]
    x, y, w = int(box[0]), int(box[1]), int(box[2])
    # the box's top edge is drawn over the face: the annotated frame differs there, not far from it
    assert np.abs(frames[0][y, x:x + w].astype(int) - original[y, x:x + w]).mean() > 30
    assert np.abs(frames[0][470, :40].astype(int) - original[470, :40]).mean() < 8


@pytest.mark.slow
def test_video_answers_are_the_photo_paths_answers_for_the_same_frames(run, faces_data, tmp_path, capsys):
    """Same detector, alignment and preprocessing as a photo: each frame of a clip small enough that neither
    path searches a downscaled copy (480x360), saved as a photo and predicted photo by photo, gives its faces
    the same boxes and probabilities as the video path."""
    crops = [np.asarray(Image.open(faces_data / n / f"{PEOPLE[n]:02d}.jpg").convert("RGB")) for n in PEOPLE]
    path, photos = tmp_path / "small.mp4", tmp_path / "photos"
    photos.mkdir()
    with VideoWriter(path, 480, 360, 25) as writer:
        for frame, _ in moving_faces(crops, 480, 360, 12, seed=5, sides=(80, 100)):
            writer.write(frame)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(photos / f"{i:03d}.png")
    assert in_process(capsys, "predict", str(run), str(path), "--out", str(tmp_path / "v.csv")).returncode == 0
    assert in_process(capsys, "predict", str(run), str(photos), "--faces", "detect",
                      "--out", str(tmp_path / "p.csv")).returncode == 0
    key = ("x", "y", "w", "h", "p_man")
    video = sorted((int(r["frame"]), *(r[k] for k in key)) for r in read_csv(tmp_path / "v.csv"))
    photo = sorted((int(Path(r["path"]).stem), *(r[k] for k in key)) for r in read_csv(tmp_path / "p.csv"))
    assert len(video) >= 20 and len({v[-1] for v in video}) > 5  # faces found, answers that differ
    assert [v[:5] for v in video] == [p[:5] for p in photo]
    np.testing.assert_allclose([float(v[5]) for v in video], [float(p[5]) for p in photo], atol=1e-5)


@pytest.mark.slow
def test_every_k_analyses_every_kth_frame_and_tracks_bridge_the_gaps(run, clip, tmp_path, capsys):
    path, truth, _ = clip
    out = tmp_path / "frames.csv"
    assert in_process(capsys, "predict", str(run), str(path), "--out", str(out), "--every", "3").returncode == 0
    rows = read_csv(out)
    assert {int(r["frame"]) for r in rows} <= set(range(0, 30, 3))
    for hits in matched(rows, truth).values():
        assert len(hits) >= 9 and len({r["track"] for _, r in hits}) == 1


@pytest.mark.slow
def test_smoothing_is_an_ema_with_the_given_time_constant(run, clip, tmp_path, capsys):
    """--smooth S: p_t = p_prev + (1 - exp(-dt / S)) * (raw_t - p_prev), per track; raw from a run without it."""
    path, truth, _ = clip
    raw_out, smooth_out = tmp_path / "raw.csv", tmp_path / "smooth.csv"
    assert in_process(capsys, "predict", str(run), str(path), "--out", str(raw_out)).returncode == 0
    assert in_process(capsys, "predict", str(run), str(path), "--out", str(smooth_out), "--smooth",
                      "0.5").returncode == 0
    raw, smooth = read_csv(raw_out), read_csv(smooth_out)
    assert [(r["frame"], r["track"]) for r in raw] == [(r["frame"], r["track"]) for r in smooth]
    weight = 1 - np.exp(-(1 / 25) / 0.5)
    last: dict[str, float] = {}
    for r, s in zip(raw, smooth):
        expected = float(r["p_man"]) if r["track"] not in last else last[r["track"]] + weight * (
            float(r["p_man"]) - last[r["track"]])
        assert float(s["p_man"]) == pytest.approx(expected, abs=2e-6)
        last[r["track"]] = float(s["p_man"])
        assert s["raw_label"] == r["label"]
    assert np.std([float(s["p_man"]) for s in smooth]) <= np.std([float(r["p_man"]) for r in raw])


@pytest.mark.slow
def test_a_truncated_video_keeps_its_frames_and_says_where_it_stopped(run, clip, tmp_path, capsys):
    path, _, _ = clip
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[:len(data) * 3 // 4])
    out = tmp_path / "frames.csv"
    result = in_process(capsys, "predict", str(run), str(cut), "--out", str(out))
    assert result.returncode == 1
    line = [line for line in result.stderr.strip().splitlines()]
    assert len(line) == 1 and "stopped after frame" in line[0] and "cut.mp4" in line[0], result.stderr
    stopped = int(line[0].split("stopped after frame ")[1].split()[0])
    rows = read_csv(out)
    assert 0 < stopped < 30 and rows and max(int(r["frame"]) for r in rows) == stopped - 1


@pytest.mark.parametrize("content, words", [
    (b"this is not a video at all\n", "is not a video FFmpeg can read"),
    (b"YUV4MPEG2 W64 H48 F25:1 Ip A1:1 C420jpeg\n", "has no video frames"),
    (b"YUV4MPEG2 W9000 H6000 F25:1 Ip A1:1 C420jpeg\n", "larger than facetl reads"),
], ids=["not-a-video", "zero-frames", "huge-frames"])
def test_a_bad_video_is_one_line_and_writes_nothing(tmp_path, capsys, content, words):
    run = tmp_path / "run"  # refused before the run is opened: any folder will do
    run.mkdir()
    bad = tmp_path / "inputs" / ("bad.y4m" if content.startswith(b"YUV") else "bad.mp4")
    bad.parent.mkdir()
    bad.write_bytes(content)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    result = in_process(capsys, "predict", str(run), str(bad), "--out", str(outputs / "frames.csv"),
                        "--annotate", str(outputs / "annotated"))
    one_line_error(result, words, "bad.")
    assert list(outputs.iterdir()) == [] and bad.read_bytes() == content


def test_without_pyav_one_line_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 100)
    (tmp_path / "run").mkdir()
    result = in_process(capsys, "predict", str(tmp_path / "run"), str(clip), "--out", str(tmp_path / "f.csv"))
    one_line_error(result, "pip install 'facetl[video]'")


@pytest.mark.slow
def test_a_folder_of_photos_and_videos_goes_into_one_csv(run, clip, faces_data, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip[0].read_bytes())
    Image.open(faces_data / "man" / "00.jpg").resize((200, 200)).save(folder / "photo.jpg")
    out, annotated = tmp_path / "frames.csv", tmp_path / "annotated"
    result = in_process(capsys, "predict", str(run), str(folder), "--out", str(out), "--annotate", str(annotated))
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    photo = [r for r in rows if r["path"].endswith("photo.jpg")]
    assert len(photo) == 1 and photo[0]["frame"] == "" and photo[0]["label"] in ("man", "woman")
    assert sum(r["path"].endswith("clip.mp4") for r in rows) >= 50
    assert sorted(p.name for p in annotated.iterdir()) == ["clip.annotated.mp4", "photo.annotated.png"]
    again = in_process(capsys, "predict", str(run), str(folder), "--annotate", str(annotated))
    one_line_error(again, "exists", "--overwrite")


def test_tracks_survive_missed_detections_and_long_gaps_between_analysed_frames():
    """Two faces moving steadily: a frame that misses one, and analysed frames 2 s apart (--every 50 at 25 fps),
    keep both numbers; a face gone for longer than the tracker keeps a track comes back with a new one."""
    from facetl.inference.video import FaceTracker

    tracker = FaceTracker()
    boxes = lambda t: [(50 + 20 * t, 100, 80, 100), (400 - 20 * t, 200, 90, 110)]  # noqa: E731
    assert tracker.update(boxes(0), [0.999, 0.999], 0.0) == [1, 2]
    assert tracker.update(boxes(0.04)[1:], [0.999], 0.04) == [2]      # face 1 missed for a frame
    assert tracker.update(boxes(0.08), [0.999, 0.95], 0.08) == [1, 2]
    for t in (2.08, 4.08, 6.08):                                       # analysed every 2 s
        assert tracker.update(boxes(t), [0.999, 0.999], t) == [1, 2]
    for t in np.arange(6.12, 7.5, 0.04):                              # 25 fps again, face 2 gone ...
        assert tracker.update(boxes(t)[:1], [0.999], t) == [1]
    assert tracker.update(boxes(7.52), [0.999, 0.999], 7.52) == [1, 3]  # ... for 1.4 s: a new number


def test_a_long_stream_of_passing_faces_keeps_only_the_faces_in_view():
    """A camera stream of hours sees thousands of faces come and go: the smoother forgets each one's average
    once its track ends, and a face coming back starts again from its own answer."""
    from facetl.inference.video import FaceTracker, ProbabilitySmoother

    tracker, smoother = FaceTracker(), ProbabilitySmoother(0.5)
    for second in range(1000):  # a new face every second, each at a new place: every track ends
        for t in np.arange(second, second + 0.5, 0.1):
            [track] = tracker.update([(100.0 * (second % 7), 50, 80, 100)], [0.999], float(t))
            smoother(track, float(t), np.array([0.2, 0.8]))
            smoother.keep_only(tracker.live)
        assert len(smoother) <= 2
    assert track == 1000 and len(tracker.live) <= 2
    for t in np.arange(999.5, 1001.0, 0.1):  # no face for 1.5 s: the last track ends too
        tracker.update([], [], float(t))
        smoother.keep_only(tracker.live)
    assert len(smoother) == 0


@pytest.mark.slow
def test_a_run_stopped_half_way_leaves_nothing_half_written(run, clip, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of a video: neither the CSV, the tracks CSV nor the annotated video exists, under
    its name or a temporary one; a CSV that was there before is byte-identical."""
    from facetl.inference.video import FramePipeline

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "frames.csv").write_text("the user's own\n")
    process, calls = FramePipeline.process, []

    def interrupted(self, frames, times):
        calls.append(len(frames))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return process(self, frames, times)

    monkeypatch.setattr(FramePipeline, "process", interrupted)
    result = in_process(capsys, "predict", str(run), str(clip[0]), "--out", str(outputs / "frames.csv"),
                        "--overwrite", "--annotate", str(outputs / "annotated"))
    assert result.returncode == 130 and "interrupted" in result.stderr
    assert sorted(p.name for p in outputs.rglob("*") if p.is_file()) == ["frames.csv"]
    assert (outputs / "frames.csv").read_text() == "the user's own\n"


# --- issue 29: names that clash, phone videos, broken MKV/WebM, a video given twice, memory while annotating ---

def write_clip(path: Path, frames: list[np.ndarray], container: str, codec: str, rotation: int = 0) -> Path:
    """`frames` (upright) as a video of `container`; with `rotation` (degrees counter-clockwise, as a phone's
    display matrix says) the pixels are stored turned the other way, so that a player shows them upright."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=25)
        stored = [np.ascontiguousarray(np.rot90(f, k=-rotation // 90)) for f in frames]
        stream.width, stream.height, stream.pix_fmt = stored[0].shape[1], stored[0].shape[0], "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for pixels in stored:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip_frames(clip) -> list[np.ndarray]:
    with av.open(str(clip[0])) as video:
        return [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]


@pytest.mark.slow
def test_videos_differing_only_in_extension_get_distinct_annotated_videos(run, clip, clip_frames, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip[0].read_bytes())
    write_clip(folder / "clip.mkv", clip_frames[:20], "matroska", "libx264")
    annotated = tmp_path / "annotated"
    result = facetl("predict", str(run), str(folder), "--every", "10", "--annotate", str(annotated))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in annotated.iterdir()) == ["clip.mkv.annotated.mp4", "clip.mp4.annotated.mp4"]
    for name, frames in (("clip.mp4", 30), ("clip.mkv", 20)):
        with av.open(str(annotated / f"{name}.annotated.mp4")) as video:
            assert sum(1 for _ in video.decode(video=0)) == frames
        assert f"annotated video {annotated / name}.annotated.mp4" in result.stdout


def test_a_csv_onto_the_annotated_video_is_refused_before_any_work(clip_of_noise, tmp_path):
    """--out out/clip.annotated.mp4 --annotate out: the CSV would replace the annotated video."""
    run = tmp_path / "run"  # refused before the run is opened: any folder will do
    run.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    result = facetl("predict", str(run), str(clip_of_noise), "--out", str(out / "clip.annotated.mp4"),
                    "--annotate", str(out))
    one_line_error(result, "--out", "clip.annotated.mp4", "annotated video")
    assert list(out.iterdir()) == []


@pytest.fixture
def clip_of_noise(tmp_path) -> Path:
    """A 10-frame clip of noise: enough for the checks made before any work."""
    rng = np.random.default_rng(0)
    return write_clip(tmp_path / "clip.mp4", [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(10)],
                      "mp4", "libx264")


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_video_with_a_display_rotation_is_read_upright(tmp_path, rotation):
    """Frames stored turned, with the display matrix a phone writes: the reader gives them as a player shows them."""
    upright = np.zeros((48, 64, 3), np.uint8)
    upright[:12, :20] = 255  # a white block at the top left
    path = write_clip(tmp_path / "phone.mp4", [upright] * 3, "mp4", "libx264", rotation=rotation)
    from facetl.data.video import VideoReader

    with VideoReader(path) as video:
        frames = [f.pixels for f in video]
        assert (video.info.width, video.info.height) == (64, 48)
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    assert np.abs(frames[0].astype(int) - upright).mean() < 8


@pytest.mark.slow
def test_a_phone_video_with_rotation_metadata_finds_the_faces_the_upright_video_has(run, clip, clip_frames,
                                                                                       tmp_path):
    """A phone's portrait video: pixels stored turned, a display matrix (rotate 90) to show them upright. The
    faces of the upright frames are found in it, at the same places, and the annotated video is upright."""
    _, truth, _ = clip
    phone = write_clip(tmp_path / "phone.mp4", clip_frames, "mp4", "libx264", rotation=-90)
    with av.open(str(phone)) as video:
        stored = next(video.decode(video=0))
        assert (stored.width, stored.height, stored.rotation) == (480, 640, -90)  # the clip really is turned
    out, annotated = tmp_path / "frames.csv", tmp_path / "annotated"
    result = facetl("predict", str(run), str(phone), "--out", str(out), "--annotate", str(annotated))
    assert result.returncode == 0, result.stderr
    found = matched(read_csv(out), truth)
    assert len(found) == 2 and all(len(hits) >= 0.9 * len(truth) for hits in found.values()), result.stdout
    with av.open(str(annotated / "phone.annotated.mp4")) as video:
        first = next(video.decode(video=0))
        assert (first.width, first.height) == (640, 480)


@pytest.mark.slow
@pytest.mark.parametrize("container, codec, damage", [
    ("matroska", "libx264", "truncated"), ("webm", "libvpx", "truncated"), ("matroska", "libx264", "corrupt"),
], ids=["mkv-truncated", "webm-truncated", "mkv-corrupt"])
def test_a_damaged_mkv_or_webm_warns_and_exits_1(run, clip_frames, tmp_path, container, codec, damage):
    """MKV and WebM do not record a frame count, but they record a duration: a file that ends early, or whose
    middle is garbage, keeps the frames before the damage, says where it stopped and exits 1."""
    name = "clip." + ("mkv" if container == "matroska" else "webm")
    whole = write_clip(tmp_path / ("whole_" + name), clip_frames, container, codec).read_bytes()
    damaged = tmp_path / name
    if damage == "truncated":
        damaged.write_bytes(whole[:len(whole) // 2])
    else:
        middle = len(whole) // 3
        noise = np.random.default_rng(1).integers(0, 256, len(whole) // 4, dtype=np.uint8).tobytes()
        damaged.write_bytes(whole[:middle] + noise + whole[middle + len(noise):])
    out = tmp_path / "frames.csv"
    result = facetl("predict", str(run), str(damaged), "--out", str(out), "--every", "5")
    assert result.returncode == 1, (result.returncode, result.stderr)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and name in warnings[0] and "stopped after frame" in warnings[0], result.stderr
    stopped = int(warnings[0].split("stopped after frame ")[1].split()[0])
    assert 0 < stopped < 30 and f"{stopped} frames" in result.stdout
    assert all(int(r["frame"]) < stopped for r in read_csv(out))


@pytest.mark.slow
def test_the_same_video_given_twice_is_read_once(run, clip, tmp_path):
    path = clip[0]
    out = tmp_path / "frames.csv"
    result = facetl("predict", str(run), str(path), str(path.parent / "." / path.name), str(path.parent),
                    "--out", str(out), "--every", "3")
    assert result.returncode == 0, result.stderr
    assert "given more than once" in result.stdout and result.stdout.count(": 30 frames, 10 analysed") == 1
    rows = read_csv(out)
    assert len({r["path"] for r in rows}) == 1
    assert len({(r["frame"], r["track"]) for r in rows}) == len(rows)  # no face twice in a frame
    assert all(int(t["frames"]) <= 10 for t in read_csv(tmp_path / "frames.tracks.csv"))


def peak_rss_mib(*args: str) -> tuple[int, float]:
    """`facetl ARGS` in a fresh process: its exit status and its peak resident memory (MiB)."""
    process = subprocess.Popen([sys.executable, "-m", "facetl", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024


@pytest.mark.slow
def test_annotating_with_every_k_holds_a_bounded_number_of_frames(run, clip_frames, tmp_path):
    """--every 1000 --annotate on a 600-frame clip (550 MB of decoded frames) peaks no higher than on a 60-frame
    clip: frames between analysed ones are written as they come, not held."""
    still = clip_frames[0]
    short = write_clip(tmp_path / "short.mp4", [still] * 60, "mp4", "libx264")
    long = write_clip(tmp_path / "long.mp4", [still] * 600, "mp4", "libx264")
    peaks = {}
    for path in (short, long):
        code, peaks[path.name] = peak_rss_mib("predict", str(run), str(path), "--every", "1000", "--annotate",
                                              str(tmp_path / path.stem))
        assert code == 0
    assert peaks["long.mp4"] - peaks["short.mp4"] < 150, peaks


def test_a_label_of_a_face_at_the_right_edge_of_a_frame_stays_inside_it():
    from facetl.inference.annotate import FacePainter
    from facetl.inference.video import TrackedFace

    frame = np.full((120, 320, 3), 255, np.uint8)
    face = TrackedFace(3, (280.0, 60.0, 38.0, 50.0), 0.99, np.array([0.1, 0.9]), np.array([0.1, 0.9]), "positives",
                       0.9, None, "positives")
    painted = FacePainter(320, 120).paint(frame, [face])
    label_rows = painted[: 60 - 2]  # above the box: the label's filled band alone
    filled = np.flatnonzero((label_rows != 255).any(axis=(0, 2)))
    # the whole text "#3 positives 0.90" is wider than the 40 px right of the box: the band starts left of it and
    # reaches no further than the frame's edge
    assert filled.min() < 280 and filled.max() == 319
    assert filled.max() - filled.min() > 80
