"""Running facetl as a user does, and what a user must see when the input is bad: one line, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
