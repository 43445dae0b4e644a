"""Without a terminal (a log file, CI, nohup) a run still says what it is doing: progress lines with counts,
rates and ETA on stdout, a line per finished stage, and the wall time of every stage, in the log and the report."""
from __future__ import annotations

import facetl.progress
from facetl.cli import main
from facetl.progress import LineProgress


def test_line_progress_counts_rates_and_eta(capsys, monkeypatch):
    monkeypatch.setattr(facetl.progress, "LINE_SECONDS", 0.0)
    clock = iter(range(100))
    monkeypatch.setattr(facetl.progress.time, "perf_counter", lambda: float(next(clock)))
    for _ in LineProgress(range(4), desc="decoding", unit="img"):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "decoding: 1/4 (25%) img, 1.0 img/s, ETA 3 s"
    assert lines[-1] == "decoding: 4 img in 5.0 s (0.8 img/s)"


def test_a_run_without_a_terminal_leaves_a_readable_log(tiny_folder_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(facetl.progress, "LINE_SECONDS", 0.0)  # every update a line, as a long stage would
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder_dataset), "--weights", "none", "--img-size", "32",
                 "--strategy", "full", "--epochs", "2", "--batch-size", "4", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out, "no terminal control characters in a log"
    assert any(line.startswith("epoch 1/2: ") and "batch/s" in line for line in out.splitlines()), out
    assert any(line.startswith("decoding images at 32px: ") for line in out.splitlines()), out
    wall = [line for line in out.splitlines() if line.startswith("wall time: ")]
    assert wall and "data and model" in wall[0] and "training" in wall[0] and "total" in wall[0]
    assert "**Wall time:** data and model" in (run / "report.md").read_text()
