"""`facetl serve` under load, on loopback: one markdown table.

Starts a real `facetl serve RUN...` process on a free port, then sends real photos (skimage's astronaut,
one face; two group photos of celebrity_faces crops pasted on a blurred background, 3 and 5 faces):
first one request at a time (the latency of a single request), then CLIENTS clients at once, each
sending its next photo as soon as it has its answer, for SECONDS. Prints requests per second, p50 /
p95 / p99 latency, errors (anything but 200) and the server's peak resident memory (VmHWM).

    .venv/bin/python benchmarks/bench_serve.py [RUN ...] [--clients 8] [--seconds 30] [--threads 1]

Without RUN it trains a small smile run first (MobileNetV2, 64 px, 200 SMILEsmileD images, one epoch,
no pretraining): its answers mean nothing, its arithmetic is a trained run's.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from facetl.data.faces.composite import background, paste_faces

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def photos() -> dict[str, bytes]:
    from skimage import data

    files = sorted((SHARED / "celebrity_faces").glob("*/*.jpg"))
    if not files:
        sys.exit(f"celebrity_faces not found in {SHARED} (see shared/datasets/README.md)")
    crops = [np.asarray(Image.open(files[i]).convert("RGB")) for i in range(7, len(files), len(files) // 9)][:8]
    three, _ = paste_faces(background(640, 480, seed=1), crops[:3],
                           [(120, 170, 130, 4.0), (330, 240, 110, -5.0), (520, 180, 120, 2.0)])
    five, _ = paste_faces(background(1280, 720, seed=2), crops[3:8],
                          [(180, 250, 200, 3.0), (450, 400, 150, -4.0), (700, 230, 180, 5.0), (950, 450, 160, -2.0),
                           (1150, 200, 140, 0.0)])
    return {"astronaut 512x512, 1 face": jpeg(data.astronaut()), "group 640x480, 3 faces": jpeg(three),
            "group 1280x720, 5 faces": jpeg(five)}


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def small_run(folder: Path) -> Path:
    out = folder / "smile"
    subprocess.run([sys.executable, "-m", "facetl", "train", "--data", str(SHARED / "SMILEsmileD" / "SMILEs"),
                    "--weights", "none", "--img-size", "64", "--epochs", "1", "--limit", "200", "--backbone",
                    "mobilenet_v2", "--strategy", "last-block", "--out", str(out), "--cache-dir",
                    str(folder / "cache")], check=True, stdout=subprocess.DEVNULL)
    return out


class Server:
    def __init__(self, runs: list[str], threads: int, log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "facetl", "serve", *runs, "--port", "0",
                                             "--threads", str(threads)], stdout=out, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            found = re.search(r"at (http://\S+)/ ", log.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                return
            time.sleep(0.2)
        self.stop()
        sys.exit(f"facetl serve did not start:\n{log.read_text(errors='replace')}")

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def post(client: httpx.Client, url: str, data: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    try:
        status = client.post(f"{url}/api/predict", files={"image": ("photo.jpg", data)}, timeout=120).status_code
    except httpx.HTTPError:
        status = 0
    return time.perf_counter() - start, status


def sequential(url: str, images: dict[str, bytes], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in images}
    with httpx.Client() as client:
        for _ in range(rounds):
            for name, data in images.items():
                seconds, status = post(client, url, data)
                if status != 200:
                    sys.exit(f"a single request failed with status {status}")
                times[name].append(seconds)
    return times


def load(url: str, images: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, float]:
    """`clients` threads, each with its own keep-alive connection, sending back to back until the deadline."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client_loop(k: int) -> None:
        with httpx.Client() as client:
            n = k
            while time.perf_counter() < deadline:
                elapsed, status = post(client, url, images[n % len(images)])
                n += 1
                with lock:
                    latencies.append(elapsed)
                    errors[0] += status != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folders to serve (default: train a small one)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load test (default 30)")
    parser.add_argument("--rounds", type=int, default=10, help="sequential requests per photo (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads (default 1)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or [str(small_run(Path(tmp)))]
        images = photos()
        server = Server(runs, args.threads, Path(tmp) / "serve.log")
        try:
            sequential(server.url, images, 1)  # warm: connections, caches, allocator
            single = sequential(server.url, images, args.rounds)
            latencies, errors, elapsed = load(server.url, list(images.values()), args.clients, args.seconds)
            rss = server.peak_rss_mib()
        finally:
            code = server.stop()

    every = [t for times in single.values() for t in times]
    print(f"facetl serve {' '.join(Path(r).name for r in runs)} --threads {args.threads}; {os.cpu_count()} CPUs; "
          f"photos: {', '.join(images)}; exit code after SIGTERM {code}\n")
    print("| single request (sequential) | p50 ms | p95 ms |")
    print("|---|---|---|")
    for name, times in single.items():
        print(f"| {name} | {percentile(times, 50):.0f} | {percentile(times, 95):.0f} |")
    print(f"| all three, mixed | {percentile(every, 50):.0f} | {percentile(every, 95):.0f} |")
    print()
    print(f"| {args.clients} clients for {args.seconds:.0f} s | value |")
    print("|---|---|")
    print(f"| requests | {len(latencies)} |")
    print(f"| errors | {errors} |")
    print(f"| requests/s | {len(latencies) / elapsed:.2f} (sequential: {len(every) / sum(every):.2f}) |")
    for q in (50, 95, 99):
        print(f"| p{q} latency ms | {percentile(latencies, q):.0f} |")
    print(f"| p95 / single-request p50 | {percentile(latencies, 95) / percentile(every, 50):.1f}x |")
    print(f"| server peak RSS (VmHWM) | {rss:.0f} MiB |")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
