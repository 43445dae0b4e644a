"""Running facetl as a user does, and what a user must see when the input is bad: one line, no traceback."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facetl.cli import main

ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def facetl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "facetl", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=600)


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """main() in this process (no interpreter start-up), seen as a finished process would be."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse errors exit
        code = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def one_line_error(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """Exit `code`, no traceback, and exactly one line (warnings aside) that contains every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class ServeProcess:
    """`facetl serve ...` as a subprocess on a free loopback port, optionally under a lower `ulimit -n`."""

    def __init__(self, args: list[str], log: Path, file_limit: int | None = None):
        self.log = log
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "facetl", "serve", *args, "--port", "0"],
                                            stdout=out, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=(lambda: _limit_files(file_limit)) if file_limit else None)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            found = re.search(r"at (http://(\S+):(\d+))/ ", log.read_text(errors="replace"))
            if found:
                self.url, self.host, self.port = found.group(1), found.group(2), int(found.group(3))
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"facetl serve did not start:\n{log.read_text(errors='replace')}")

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """A hand-written request; the status, headers and body of the answer (read until the server closes)."""
        with self.connect() as sock:
            sock.sendall(request)
            reply = b""
            while piece := sock.recv(65536):
                reply += piece
        head, _, body = reply.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        return int(status.split()[1]), dict(line.lower().split(": ", 1) for line in lines), body

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _limit_files(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def write_images(folder: Path, n: int, seed: int) -> None:
    """n noise images of 24 px: a class folder for a run that only has to exist (a server's, a page's)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def headless_chromium(*flags: str, window: str = "1280,900"):
    """Debian's chromium through its chromedriver (browser builds that download themselves fail here), or a skip
    that says what is missing. The caller quits it."""
    import pytest

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={window}", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
