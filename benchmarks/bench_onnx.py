"""Inference speed of the classifier alone: PyTorch against ONNX Runtime, on this CPU, in one run.

What it measures, per case (backbone, image size) and batch size (1 and 32): images per second through
the whole classifier, from a uint8 (batch, size, size, 3) batch to (batch, classes) probabilities.
  pytorch       `facetl.commands.export.ExportedClassifier` (the same operations as `LoadedRun.classify`: scale,
                normalise, the model on a channels_last batch, sigmoid) in fp32 under inference_mode;
  onnxruntime   the same module exported by facetl (`onnx_model`) and run by `OnnxClassifier`, with the
                session options `facetl predict --engine onnx` uses.
Both use the same number of threads (one per usable core unless --threads). Weights are random (the
linear head, two classes): weights do not change the amount of computation. Decoding is not included.

Each measurement repeats the batch until --seconds have passed, after a warm-up; the two engines take
turns, --repeats times, and the best images/s of each is kept, because on a shared machine the best of
a few runs is the one least disturbed by other work. The header records the load average before and after.
PyTorch's OpenMP pool suffers most when the cores are shared: at load average 5 on 2 cores, MobileNetV2
at batch 1 ran at 0.8 images/s with 2 threads and 94 with 1. When the load average is high, compare with
--threads 1 as well.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_onnx.py            # about 3 minutes on an idle 2-core machine
    .venv/bin/python benchmarks/bench_onnx.py --quick    # checks the script: one short repeat per cell
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facetl.commands.export import ExportedClassifier, onnx_metadata, onnx_model  # noqa: E402
from facetl.inference.onnx import OnnxClassifier, usable_cores  # noqa: E402
from facetl.models.classifier import FaceClassifier  # noqa: E402
from facetl.models.factory import create_backbone  # noqa: E402
from facetl.models.heads import build_head  # noqa: E402
from facetl.preprocessing import Preprocessing  # noqa: E402
from facetl.tables import markdown_table  # noqa: E402

CASES = (("mobilenet_v2", 64), ("vgg16", 224))
BATCHES = (1, 32)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(backbone: str, size: int) -> tuple[torch.nn.Module, Preprocessing]:
    torch.manual_seed(0)
    net = create_backbone(backbone, "none")
    model = FaceClassifier(net, build_head("linear", net, size, 1, 0.0), 1).eval()
    return model, Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD)


def images_per_second(run, images: np.ndarray, seconds: float) -> float:
    run(images)  # warm-up: first-call allocations, ONNX Runtime's kernel choice, oneDNN primitives
    count, start = 0, time.perf_counter()
    while True:
        run(images)
        count += len(images)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def measure_case(backbone: str, size: int, args, folder: Path) -> list[dict]:
    model, prep = build(backbone, size)
    started = time.perf_counter()
    proto = onnx_model(model, prep, onnx_metadata(prep, ["no", "yes"], f"bench {backbone}", backbone))
    export_s = time.perf_counter() - started
    path = folder / f"{backbone}-{size}.onnx"
    path.write_bytes(proto.SerializeToString())
    onnx = OnnxClassifier(path, threads=args.threads)
    wrapped = ExportedClassifier(model, prep).eval()

    @torch.inference_mode()
    def pytorch(images: np.ndarray) -> np.ndarray:
        return wrapped(torch.from_numpy(images)).numpy()

    rows = []
    for batch in BATCHES:
        images = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        diff = float(np.abs(pytorch(images) - onnx.classify(images)).max())
        best = {"pytorch": 0.0, "onnxruntime": 0.0}
        for _ in range(args.repeats):  # take turns, so a burst of other work hits both engines alike
            best["pytorch"] = max(best["pytorch"], images_per_second(pytorch, images, args.seconds))
            best["onnxruntime"] = max(best["onnxruntime"], images_per_second(onnx.classify, images, args.seconds))
        rows.append({"case": f"{backbone} {size} px", "batch": batch, **best, "diff": diff, "export_s": export_s})
        print(f"  {backbone} {size} px batch {batch}: pytorch {best['pytorch']:.1f}/s, onnxruntime "
              f"{best['onnxruntime']:.1f}/s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], header: list[str]) -> str:
    columns = ["case", "batch", "PyTorch images/s", "ONNX Runtime images/s", "ratio", "max prob. diff", "export s"]
    cells = [[r["case"], r["batch"], f"{r['pytorch']:.1f}", f"{r['onnxruntime']:.1f}",
              f"{r['onnxruntime'] / r['pytorch']:.2f}x", f"{r['diff']:.1e}", f"{r['export_s']:.1f}"] for r in rows]
    return "\n".join(header + ["", *markdown_table(columns, cells)])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat per cell: checks the script")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="threads for both engines")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="turns per engine; the best is kept")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 0.2, 1
    torch.set_num_threads(args.threads)
    import onnxruntime

    before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone, size in CASES:
            rows.extend(measure_case(backbone, size, args, Path(folder)))
    after = os.getloadavg()
    header = [f"Classifier alone, uint8 batch in, probabilities out; random weights (no pretraining), linear head, "
              f"2 classes; fp32; {args.threads} threads each; best of {args.repeats} x {args.seconds:g} s"
              f"{' (--quick: not for quoting)' if args.quick else ''}.",
              f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, onnxruntime "
              f"{onnxruntime.__version__}; load average before {before[0]:.2f} / after {after[0]:.2f} "
              f"(1 min).", "Ratio = ONNX Runtime / PyTorch images/s; max prob. diff = largest |difference| of "
              "the probabilities on the measured batch."]
    text = table(rows, header)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
