"""`facetl serve`'s camera mode in a real browser: answers a second and latency, as the page's panel shows them.

Makes a clip of celebrity_faces crops swaying on a plain background (640x480, 30 frames a second, looped),
starts a real `facetl serve RUN...`, opens its page in Debian's headless chromium with the clip as a fake
camera (--use-file-for-fake-video-capture), starts camera mode and, after WARM seconds, reads the page's
panel every second for SECONDS: answers a second (over the last 2 s), latency p50 / p95 (from taking a
frame to its answer, over the last 100 answers) and the server's own time for the last frame. Prints a
markdown table: the median and the worst of those readings, and the answers counted over the whole time.

    .venv/bin/python benchmarks/bench_camera.py [RUN ...] [--seconds 20] [--faces 2] [--out docs/serve-camera.png]

Without RUN it trains a small smile run first (bench_serve.py's: MobileNetV2, 64 px, one epoch). With
--out it also saves a screenshot of what the page shows at the end (1000 px wide, 256 colours). --people-from
SPLIT_CSV takes the clip's people from that run's test split (none of them was trained on).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench_serve import SHARED, Server, small_run
from facetl.data.faces.composite import background, paste_faces

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PLACES = [(170, 250, 170, 4.0), (450, 220, 150, -5.0), (330, 380, 110, 2.0)]  # centre x, y, side, angle
READ = """const panel = document.getElementById("camera-stats").dataset;
return {answers: +panel.answers, fps: +panel.fps, p50: +panel.p50, p95: +panel.p95, server: +panel.server,
        dropped: +panel.dropped, error: document.getElementById("error").innerText, now: performance.now()};"""


def people(split_csv: str | None, n: int) -> list[np.ndarray]:
    """One crop each of n people, alternating men and women (from a run's test split when given)."""
    folder = SHARED / "celebrity_faces"
    if not folder.is_dir():
        sys.exit(f"celebrity_faces not found in {SHARED} (see shared/datasets/README.md)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if split_csv:
        with open(split_csv, newline="", encoding="utf-8") as f:
            tested = {row["group"] for row in csv.DictReader(f) if row["split"] == "test" and row.get("group")}
        names = [p for p in names if p in tested] or names
    with open(SHARED / "celebrity_faces_attributes.csv", newline="", encoding="utf-8") as f:
        male = {row["identity"]: row["Male"] == "1" for row in csv.DictReader(f)}
    men, women = [p for p in names if male.get(p)], [p for p in names if not male.get(p)]
    chosen = [p for pair in zip(men, women) for p in pair]
    chosen = (chosen + [p for p in men + women if p not in chosen])[:n]
    return [np.asarray(Image.open(sorted((folder / p).glob("*.jpg"))[0]).convert("RGB")) for p in chosen]


def write_clip(path: Path, crops: list[np.ndarray], frames: int = 30) -> None:
    """The faces at PLACES, swaying 12 px left and right over the loop, as YUV4MPEG2 (4:2:0, full range)."""
    wall = (0.35 * background(640, 480, seed=7) + 0.65 * 228).astype(np.uint8)  # a pale room, no faces in it
    with open(path, "wb") as out:
        out.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for i in range(frames):
            shift = 12 * np.sin(2 * np.pi * i / frames)
            places = [(round(x + shift), y, side, angle) for x, y, side, angle in PLACES[:len(crops)]]
            rgb, _ = paste_faces(wall, crops, places)
            r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
            planes = (0.299 * r + 0.587 * g + 0.114 * b,
                      -0.168736 * r - 0.331264 * g + 0.5 * b + 128, 0.5 * r - 0.418688 * g - 0.081312 * b + 128)
            out.write(b"FRAME\n" + planes[0].clip(0, 255).round().astype(np.uint8).tobytes())
            for chroma in planes[1:]:
                half = chroma.reshape(240, 2, 320, 2).mean(axis=(1, 3))
                out.write(half.clip(0, 255).round().astype(np.uint8).tobytes())


def browse(url: str, clip: Path, warm: float, seconds: float, screenshot: Path | None) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                 "--hide-scrollbars", "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
                 "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(url)
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".model"))
        driver.find_element(By.ID, "mode-camera").click()
        driver.find_element(By.ID, "camera-toggle").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(READ)["answers"] > 0)
        time.sleep(warm)
        readings = []
        for _ in range(round(seconds)):
            time.sleep(1)
            readings.append(driver.execute_script(READ))
        if screenshot:
            shot = io.BytesIO(driver.get_screenshot_as_png())
            small(shot, screenshot)
        return readings
    finally:
        driver.quit()


def small(shot: io.BytesIO, target: Path) -> None:
    image = Image.open(shot).convert("RGB")
    image = image.resize((1000, round(image.height * 1000 / image.width)), Image.LANCZOS)
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folders to serve (default: train a small one)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to read the panel (default 20)")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds of camera before reading (default 3)")
    parser.add_argument("--faces", type=int, choices=[1, 2, 3], default=2, help="faces in the clip (default 2)")
    parser.add_argument("--people-from", help="a split.csv: the clip's people come from its test split")
    parser.add_argument("--out", type=Path, help="save a screenshot of the page at the end here (a .png)")
    args = parser.parse_args()
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        sys.exit(f"{CHROMIUM} or {CHROMEDRIVER} not found (apt-get install chromium chromium-driver)")

    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or [str(small_run(Path(tmp)))]
        clip = Path(tmp) / "clip.y4m"
        write_clip(clip, people(args.people_from, args.faces))
        server = Server(runs, 1, Path(tmp) / "serve.log")
        load = os.getloadavg()  # the CPU is shared: how busy it was says how to read the figures
        try:
            readings = browse(server.url + "/", clip, args.warm, args.seconds, args.out)
        finally:
            server.stop()

    if readings[-1]["error"]:
        sys.exit(f"the page shows an error: {readings[-1]['error']}")
    counted = (readings[-1]["answers"] - readings[0]["answers"]) / (readings[-1]["now"] - readings[0]["now"]) * 1000
    print(f"facetl serve {' '.join(Path(r).name for r in runs)} camera mode in headless chromium; {os.cpu_count()} "
          f"CPUs, load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after; a 640x480 clip of {args.faces} "
          f"faces sent as 320x240 JPEGs; {len(readings)} readings, 1 s apart\n")
    print("| panel figure | median | worst |")
    print("|---|---|---|")
    for key, name, worst in (("fps", "answers/s (last 2 s)", min), ("p50", "latency p50 ms", max),
                             ("p95", "latency p95 ms (last 100 answers)", max),
                             ("server", "server ms, last frame", max)):
        values = [r[key] for r in readings]
        print(f"| {name} | {statistics.median(values):.1f} | {worst(values):.1f} |")
    print(f"\nanswers counted over {len(readings) - 1} s: {counted:.1f}/s; frames skipped by the server "
          f"(latest frame wins): {readings[-1]['dropped']} of {readings[-1]['answers'] + readings[-1]['dropped']}")
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
