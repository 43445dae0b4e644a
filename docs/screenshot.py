"""The serving guide's pictures: `facetl serve` in headless Chromium, on the astronaut and on a group photo.

    .venv/bin/python docs/screenshot.py --runs runs/smile runs/gender [--people-from runs/gender/split.csv]

It starts the real server on the runs given, opens its page in Debian's Chromium (apt-get install chromium
chromium-driver), uploads each photo through the page's file input and saves what the page shows:
docs/serve.png (skimage's astronaut) and docs/serve-group.png (a collage of four celebrity_faces photos
of people in the test split of the run named by --people-from, so none of them was trained on). Each is
1000 px wide with 256 colours, small enough for the repository. Say in the docs how the runs were trained.
"""
from __future__ import annotations

import argparse
import csv
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CELEBRITIES = ROOT.parent / "shared" / "datasets" / "celebrity_faces"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--people-from", help="a split.csv with a group column: the group photo's people are "
                                              "taken from its test split")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = {"serve.png": astronaut(Path(tmp)), "serve-group.png": group_photo(Path(tmp), args.people_from)}
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "facetl", "serve", *args.runs, "--port", str(port)])
        try:
            wait_for(f"http://127.0.0.1:{port}/healthz")
            for name, photo in photos.items():
                shoot(f"http://127.0.0.1:{port}/", photo, Path(tmp) / name, len(args.runs))
                small(Path(tmp) / name, Path(args.out) / name)
                print(f"wrote {Path(args.out) / name}")
        finally:
            server.terminate()
            server.wait(30)
    return 0


def astronaut(folder: Path) -> Path:
    from skimage import data

    path = folder / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=95)
    return path


def group_photo(folder: Path, split_csv: str | None) -> Path:
    """Four people side by side, two of each gender when the table allows, one photo each."""
    people = sorted(p.name for p in CELEBRITIES.iterdir() if p.is_dir())
    if split_csv:
        with open(split_csv, newline="", encoding="utf-8") as f:
            tested = {row["group"] for row in csv.DictReader(f) if row["split"] == "test" and row.get("group")}
        people = [p for p in people if p in tested] or people
    male = {}
    with open(CELEBRITIES.parent / "celebrity_faces_attributes.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            male[row["identity"]] = row["Male"] == "1"
    chosen = [p for p in people if male.get(p)][:2] + [p for p in people if not male.get(p)][:2]
    tiles = []
    for person in chosen[:4]:
        first = sorted((CELEBRITIES / person).iterdir())[0]
        image = Image.open(first).convert("RGB")
        tiles.append(image.resize((round(image.width * 320 / image.height), 320), Image.LANCZOS))
    width = sum(t.width for t in tiles) + 20 * (len(tiles) + 1)
    canvas = Image.new("RGB", (width, 360), (236, 232, 226))
    x = 20
    for tile in tiles:
        canvas.paste(tile, (x, 20))
        x += tile.width + 20
    path = folder / "group.jpg"
    canvas.save(path, quality=95)
    print("group photo:", ", ".join(chosen[:4]))
    return path


def shoot(url: str, photo: Path, shot: Path, runs: int) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--hide-scrollbars", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".model")) == runs)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#faces tbody tr"))
        time.sleep(1)  # the boxes are drawn after the table
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()


def small(shot: Path, target: Path) -> None:
    image = Image.open(shot).convert("RGB")
    image = image.resize((1000, round(image.height * 1000 / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buffer, "PNG", optimize=True)
    target.write_bytes(buffer.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server did not answer {url} within {seconds:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
