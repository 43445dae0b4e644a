"""The issue-24 check of facetl tune: 8 trials on a small SMILEsmileD subset, in two worker processes sharing one
SQLite study, prune at least one trial, and the best trial's best.yaml reruns to the same validation figure.

    .venv/bin/python benchmarks/tune_check.py [--out /tmp/tune-check] [--parallel 2] [--trials 8]

Prints the tune command's trials table, `facetl runs` on the study, and the rerun's validation loss beside the
best trial's. Exit 1 when no trial was pruned or the figures differ. (tests/test_tune.py runs the same, marked slow.)
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SMILES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"
TINY = ["--data", str(SMILES), "--weights", "none", "--img-size", "32", "--limit", "80", "--batch-size", "16",
        "--strategy", "frozen", "--precision", "fp32", "--epochs", "3"]


def facetl(*args: str) -> str:
    print("$ facetl " + " ".join(args), flush=True)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "facetl", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    print(f"  ({time.perf_counter() - began:.0f} s)")
    return done.stdout


def selected_val_loss(run: Path) -> float:
    record = json.loads((run / "run.json").read_text())
    rows = list(csv.DictReader((run / "history.csv").open()))
    return float(next(r for r in rows if int(r["epoch"]) == record["best_epoch"])["val_loss"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/tune-check", help="a folder for the study and the rerun (replaced)")
    parser.add_argument("--parallel", default="2", help="worker processes (default 2)")
    parser.add_argument("--trials", default="8", help="trials (default 8)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    study = out / "study"
    print(facetl("tune", *TINY, "--space", "lr=log:1e-5:1e-1", "--trials", args.trials, "--startup-trials", "3",
                 "--parallel", args.parallel, "--out", str(study)))
    print(facetl("runs", str(study), "--sort", "val_loss"))
    rows = list(csv.DictReader((study / "trials.csv").open()))
    pruned = [r["trial"] for r in rows if r["state"] == "PRUNED"]
    (best,) = [r for r in rows if r["best"] == "True"]
    facetl("train", "--config", str(study / "best.yaml"), "--out", str(out / "rerun"))
    again = selected_val_loss(out / "rerun")
    print(f"pruned trials: {', '.join(pruned) or 'none'} of {len(rows)}")
    print(f"best trial {best['trial']}: val loss {float(best['val_loss']):.6f}; rerun of best.yaml: {again:.6f}")
    return 0 if pruned and abs(again - float(best["val_loss"])) < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
