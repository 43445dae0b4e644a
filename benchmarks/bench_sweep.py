"""A 4-point grid on SMILEsmileD, one point at a time against two at once: `facetl sweep --launcher local
--parallel 1` and `--parallel 2`, back to back, the total wall time of each.

    .venv/bin/python benchmarks/bench_sweep.py [--limit 400] [--epochs 2] [--img-size 64] [--order 2,1]

Both run every point as its own `facetl train` process; with --parallel 2 each has half the cores (affinity and
OMP_NUM_THREADS), so the two do not spin-wait against each other. The decoded images are cached before either
is timed (both read the same cache). It prints the load average before and after: on a shared machine, other
work inflates both figures.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMILES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"
GRID = ["--grid", "lr=1e-3,1e-4", "--grid", "dropout=0.5,0.2"]


def sweep(out: Path, parallel: int, args) -> float:
    command = [sys.executable, "-m", "facetl", "sweep", "--data", str(args.data), "--weights", "none",
               "--strategy", "full", "--img-size", str(args.img_size), "--epochs", str(args.epochs),
               "--limit", str(args.limit), *GRID, "--out", str(out), "--launcher", "local",
               "--parallel", str(parallel)]
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def accuracies(out: Path) -> dict[str, str]:
    with open(out / "results.csv", newline="") as f:
        return {row["run"]: row["accuracy"] for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SMILES)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--order", default="1,2", help="which --parallel runs first (a shared machine's load drifts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FACETL_CACHE"] = str(Path(tmp) / "cache")
        # the decoded images once, untimed: the split made into a throwaway folder
        sweep_warm = [sys.executable, "-c", "from facetl.experiments.sweep import make_split; "
                      "from facetl.config import TrainConfig; from pathlib import Path; "
                      f"make_split(TrainConfig(data={str(args.data)!r}, weights='none', strategy='full', "
                      f"img_size={args.img_size}, limit={args.limit}), Path({tmp!r}) / 'warm', print, False)"]
        subprocess.run(sweep_warm, check=True, stdout=subprocess.DEVNULL)
        print(f"load average before: {os.getloadavg()[0]:.2f}; {len(os.sched_getaffinity(0))} cores")
        times = {p: sweep(Path(tmp) / f"parallel-{p}", p, args) for p in map(int, args.order.split(","))}
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(f"\n4 points ({args.limit} images, {args.img_size} px, {args.epochs} epochs, MobileNetV2 trained whole)")
        print("| launcher | total wall s |\n|---|---|")
        for p, seconds in times.items():
            print(f"| --launcher local --parallel {p} | {seconds:.1f} |")
        # one thread per run against two: float sums in another order can move a borderline test image
        for p in times:
            print(f"test accuracies, --parallel {p}: {accuracies(Path(tmp) / f'parallel-{p}')}")
        print(f"speed-up {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
