"""Peak memory while facetl trains on many large images: is it bounded by the caches' size, or not?

Generates N synthetic 224x224 JPEGs (smooth gradients and ellipses, two classes) in a temporary folder,
then trains a frozen MobileNetV2 on them with a cold cache, and prints the decoded store's size, the
feature cache's size, peak RSS (ru_maxrss, which counts memory-mapped cache pages that were read) and
peak anonymous memory (RssAnon, the memory the process really holds).

    .venv/bin/python benchmarks/bench_memory.py                 # 30,000 images, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_memory.py --images 2000   # a quick check
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_speed import AnonymousPeak  # noqa: E402  (same folder: the script's own)


def make_images(root: Path, count: int, size: int) -> None:
    """Two classes that differ in where a bright ellipse sits; JPEG-compressible like real photos."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = "a" if i % 2 else "b"
        base = (np.outer(ramp, ramp[::-1]) * rng.uniform(60, 180)).astype(np.uint8)
        image = Image.fromarray(np.stack([base, base // 2 + 40, 255 - base], axis=2))
        draw = ImageDraw.Draw(image)
        y = size // 3 if label == "a" else 2 * size // 3
        x = int(rng.integers(size // 4, 3 * size // 4))
        draw.ellipse([x - 30, y - 20, x + 30, y + 20], fill=(230, 220, 200))
        image.save(root / label / f"{i}.jpg", quality=85)


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    from facetl.config import TrainConfig
    from facetl.train.fit import fit

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        make_images(tmp / "data", args.images, args.img_size)
        print(f"generated {args.images} images in {time.perf_counter() - began:.0f}s "
              f"({folder_mib(tmp / 'data'):.0f} MiB of JPEG)", flush=True)
        os.environ["FACETL_CACHE"] = str(tmp / "cache")
        config = TrainConfig(data=str(tmp / "data"), backbone="mobilenet_v2", weights="none", strategy="frozen",
                             img_size=args.img_size, epochs=args.epochs, out=str(tmp / "run"))
        import torch  # noqa: F401  (imports before the baseline, as in the speed benchmark)

        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sampler = AnonymousPeak()
        began = time.perf_counter()
        result = fit(config, progress=False, quiet=True)
        seconds = time.perf_counter() - began
        anon = sampler.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        decoded = args.images * args.img_size * args.img_size * 3 / 2**20
        print()
        print(f"| images | size | decoded store MiB | feature cache MiB | peak RSS MiB | peak anon MiB | "
              f"RSS before training MiB | fit seconds | val acc |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {args.images} | {args.img_size} | {folder_mib(tmp / 'cache' / 'images'):.0f} "
              f"(raw pixels {decoded:.0f}) | {folder_mib(tmp / 'cache' / 'features'):.0f} | {rss:.0f} | {anon:.0f} | "
              f"{baseline:.0f} | {seconds:.0f} | {result.history[-1]['val_acc']:.3f} |")


if __name__ == "__main__":
    main()
