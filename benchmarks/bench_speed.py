"""Speed benchmark: facetl's `fit` against a plain PyTorch pipeline written the way published studies
wrote theirs, on the same data, split, model, strategy and seed.

What it measures, per case (backbone, strategy, image size, images, epochs):
  reference  a torch Dataset that opens every image with PIL on every access, torchvision transforms
             (Resize, RandomHorizontalFlip when augmenting, ToTensor, Normalize with the ImageNet
             mean/std), a DataLoader (shuffled, batch 32, a few worker processes), the model built by
             facetl's own `build_model` (so architecture, head and freezing are identical), and a full
             forward pass through the whole model for every batch of every epoch; Adam,
             BCE-with-logits, validation after each epoch, one test pass at the end.
  facetl     `facetl.train.fit.fit` with the same config, started cold: FACETL_CACHE points to a fresh,
             empty folder for every case, so its total includes decoding every image into the uint8
             store and computing the frozen-feature cache, plus its per-epoch checkpoints and the final
             test evaluation, plots and report.
facetl runs first; the reference then reads the split.csv facetl wrote, so both use the same images in
the same train/val/test split. Every file of the data folder is read once before any case, so both
pipelines see a warm OS page cache (neither pays for cold disk reads the other did not).

Each pipeline of each case runs in a fresh Python subprocess, so the peak resident memory reported
(getrusage ru_maxrss of that process; the largest child - DataLoader or decode worker - separately)
is that case's alone. Times exclude interpreter start and imports, which are the same for both.

Weights are random (`weights="none"`): ImageNet weights cannot be downloaded on this machine. The
weights do not change the amount of computation, so the times stand; the accuracies only show that
both pipelines train, not how well a pretrained model would do.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_speed.py --quick                 # checks the script, see below
    .venv/bin/python benchmarks/bench_speed.py --cases 1 --limit 3000 --epochs 3
    .venv/bin/python benchmarks/bench_speed.py --markdown benchmarks/speed.md   # the full benchmark
Cases: 1 = mnv2-frozen, 2 = mnv2-last-block, 3 = the four vgg16 cases (or name cases one by one:
--cases vgg16-frozen-64,vgg16-last-block-224). --epochs/--limit/--img-size override every selected
case; --out DIR keeps the run folders (default: a temporary folder, removed at the end).
--quick runs every case on a few images: about a minute and a half on an idle 2-core machine, most of
it the 12 fresh interpreters importing torch. Absolute times mean something only on an otherwise idle
machine; the table's header records the load average before and after.
"""
from __future__ import annotations

import argparse
import threading
import csv
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "SMILEsmileD" / "SMILEs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# cases

@dataclass
class Case:
    name: str
    backbone: str
    strategy: str
    img_size: int
    epochs: int
    limit: int | None   # None: every image


CASES = {c.name: c for c in [
    Case("mnv2-frozen", "mobilenet_v2", "frozen", 64, 10, None),
    Case("mnv2-last-block", "mobilenet_v2", "last-block", 64, 10, None),
    # VGG16 at 224 px runs at about 6 images/s in fp32 on 2 CPU cores: small subsets by default
    Case("vgg16-frozen-64", "vgg16", "frozen", 64, 10, 2000),
    Case("vgg16-last-block-64", "vgg16", "last-block", 64, 10, 2000),
    Case("vgg16-frozen-224", "vgg16", "frozen", 224, 2, 300),
    Case("vgg16-last-block-224", "vgg16", "last-block", 224, 2, 300),
]}
GROUPS = {"1": ["mnv2-frozen"], "2": ["mnv2-last-block"], "3": [n for n in CASES if n.startswith("vgg16")],
          "all": list(CASES)}
# --quick: enough images that every split is non-empty, few enough to finish in about a minute
QUICK = {"mnv2-frozen": (100, 2), "mnv2-last-block": (100, 2), "vgg16-frozen-64": (40, 2),
         "vgg16-last-block-64": (40, 2), "vgg16-frozen-224": (20, 1), "vgg16-last-block-224": (20, 1)}


def select_cases(args) -> list[Case]:
    names = []
    for token in args.cases.split(","):
        token = token.strip()
        if token in GROUPS:
            names += GROUPS[token]
        elif token in CASES:
            names.append(token)
        else:
            sys.exit(f"unknown case {token!r}; choose from {', '.join(list(GROUPS) + list(CASES))}")
    cases = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        case = CASES[name]
        if args.quick:
            case = dataclasses.replace(case, limit=QUICK[name][0], epochs=QUICK[name][1])
        if args.epochs is not None:
            case = dataclasses.replace(case, epochs=args.epochs)
        if args.limit is not None:
            case = dataclasses.replace(case, limit=args.limit if args.limit > 0 else None)
        if args.img_size is not None:
            case = dataclasses.replace(case, img_size=args.img_size)
        cases.append(case)
    return cases


def case_config(case: Case, args, out: Path) -> dict:
    """The TrainConfig fields both pipelines share (the reference reads what it needs from them)."""
    return {"data": str(args.data), "backbone": case.backbone, "weights": "none", "head": args.head,
            "strategy": case.strategy, "img_size": case.img_size, "epochs": case.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "augment": args.augment,
            "limit": case.limit, "precision": args.precision, "device": args.device,
            "cache": True, "out": str(out),
            # the reference's optimiser (Adam, one constant LR): the recipe would otherwise choose AdamW, one-cycle
            "optimizer": "adam", "scheduler": "none", "weight_decay": 0.0, "lr_decay": 1.0,
            # the reference has no precise-BatchNorm pass; facetl's auto would add one here only because the
            # weights are random (with ImageNet weights it is off), so both do the same work
            "precise_bn": "off"}


# --------------------------------------------------------------------------------------------------
# the two pipelines; each runs inside its own subprocess (see run_in_subprocess)

def peak_rss_mib() -> dict:
    """Resident-set high-water marks (Linux reports KiB): this process and its largest finished child."""
    return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "child_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def environment() -> dict:
    """Import everything both pipelines use before their clocks start; return the memory that takes."""
    import torch
    import torchvision.models  # noqa: F401  (facetl imports it lazily, on its first build_model)

    import facetl.models.backbones  # noqa: F401
    import facetl.train.fit  # noqa: F401

    return {"import_rss": peak_rss_mib()["rss"], "torch": torch.__version__, "threads": torch.get_num_threads()}


def run_facetl(spec: dict) -> dict:
    import facetl.train.fit as fit_module
    from facetl.config import build_config

    # Time facetl's phases by wrapping the names fit.py calls (only inside this benchmark process).
    phases = {"setup": 0.0, "decode": 0.0, "cache": 0.0, "checkpoints": 0.0, "report": 0.0}

    def timed(phase, fn):
        def wrapper(*a, **k):
            began = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[phase] += time.perf_counter() - began
        return wrapper

    for name, phase in (("read_samples", "setup"), ("build_model", "setup"), ("prepare_data", "decode"),
                        ("open_feature_source", "cache"), ("atomic_torch_save", "checkpoints"),
                        ("write_evaluation", "report")):
        if hasattr(fit_module, name):  # a renamed helper only moves its time into "test pass+rest"
            setattr(fit_module, name, timed(phase, getattr(fit_module, name)))

    env = environment()
    config = build_config(spec["config"])
    began = time.perf_counter()
    result = fit_module.fit(config, progress=False, quiet=True)
    total = time.perf_counter() - began
    return {"epoch_seconds": [h["seconds"] for h in result.history], "total": total,
            "val_acc": result.history[-1]["val_acc"], **peak_rss_mib(), **env, **phases,
            "folder": str(result.folder), "class_names": result.record.class_names,
            "device": result.record.trained_with.device, "precision": result.record.trained_with.describe()}


def run_reference(spec: dict) -> dict:
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from facetl.config import build_config
    from facetl.models import build_model

    env = environment()
    began = time.perf_counter()
    config = build_config(spec["config"])
    root, class_names = Path(config.data), spec["class_names"]
    if len(class_names) != 2:
        raise SystemExit(f"the reference pipeline is two-class (one logit, BCE-with-logits); got {class_names}")
    with open(spec["split_file"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    items = {s: [(r["path"], class_names.index(r["label"])) for r in rows if r["split"] == s]
             for s in ("train", "val", "test")}

    class FolderDataset(Dataset):
        """One PIL open + decode + transform per sample per epoch: the usual way."""

        def __init__(self, items, transform):
            self.items, self.transform = items, transform

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, label = self.items[i]
            with Image.open(root / path) as image:
                return self.transform(image.convert("RGB")), label

    size = config.img_size
    flip = [transforms.RandomHorizontalFlip()] if "flip" in config.augment else []
    train_tf = transforms.Compose([transforms.Resize((size, size)), *flip, transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    eval_tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                  transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    workers = spec["workers"]
    train_loader = DataLoader(FolderDataset(items["train"], train_tf), batch_size=config.batch_size, shuffle=True,
                              num_workers=workers, generator=torch.Generator().manual_seed(config.seed))
    val_loader = DataLoader(FolderDataset(items["val"], eval_tf), batch_size=config.batch_size,
                            num_workers=workers)
    test_loader = DataLoader(FolderDataset(items["test"], eval_tf), batch_size=config.batch_size,
                             num_workers=workers)

    # Same seed right before build_model as facetl's fit: identical initial weights.
    torch.manual_seed(config.seed)
    model = build_model(config, len(class_names), log=lambda message: None).model
    device = torch.device(spec["device"])
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    criterion = nn.BCEWithLogitsLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec["precision"])
    scaler = torch.amp.GradScaler(device.type, enabled=spec["precision"] == "fp16")

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def evaluate(loader) -> float:
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                with autocast():
                    logits = model(x)[:, 0].float()
                correct += int(((logits > 0).long() == y).sum())
                seen += len(y)
        return correct / max(seen, 1)

    setup = time.perf_counter() - began
    epoch_seconds, val_acc = [], float("nan")
    for _ in range(config.epochs):
        epoch_began = time.perf_counter()
        model.train()  # facetl's FaceClassifier keeps frozen batch-norm layers in eval mode
        for x, y in train_loader:
            x, y = x.to(device), y.to(device).float()
            with autocast():
                logits = model(x)[:, 0].float()  # the whole model, frozen layers included, every batch
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        val_acc = evaluate(val_loader)
        epoch_seconds.append(time.perf_counter() - epoch_began)
    began_test = time.perf_counter()
    test_acc = evaluate(test_loader if len(items["test"]) else val_loader)
    test = time.perf_counter() - began_test
    total = time.perf_counter() - began
    return {"epoch_seconds": epoch_seconds, "total": total, "val_acc": val_acc, "test_acc": test_acc,
            **peak_rss_mib(), **env, "setup": setup, "test": test}


def run_in_subprocess(pipeline: str, spec: dict, env: dict, log_path: Path) -> dict:
    """Run one pipeline in a fresh interpreter so its memory peak and warm state are its own."""
    result_path = log_path.with_suffix(".json")
    spec = {**spec, "pipeline": pipeline, "result": str(result_path)}
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, __file__, "--run-one", json.dumps(spec)], env=env, cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        lines = log_path.read_text().strip().splitlines() or ["(no output)"]
        print("\n".join(lines[-30:]), file=sys.stderr)
        raise RuntimeError(f"{pipeline} failed (exit {done.returncode}, log {log_path}): {lines[-1][:200]}")
    return json.loads(result_path.read_text())


class AnonymousPeak:
    """Highest RssAnon seen, sampled every 20 ms. Unlike ru_maxrss it leaves out pages of memory-mapped
    files (facetl's image and feature caches), which the kernel can drop at any time."""

    def __init__(self):
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    sampler = AnonymousPeak() if Path("/proc/self/status").is_file() else None
    result = (run_facetl if spec["pipeline"] == "facetl" else run_reference)(spec)
    result["anon_peak"] = sampler.stop() if sampler else float("nan")
    Path(spec["result"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# the table

def epoch_times(seconds: list[float]) -> tuple[float, float]:
    """(first epoch, mean of epochs 2..N); with one epoch the mean is that epoch."""
    rest = seconds[1:] or seconds[:1]
    return seconds[0], sum(rest) / len(rest)


def table_header(args, results: list[dict], load_before: float, load_after: float) -> list[str]:
    devices = sorted({f"{r['device']} {r['precision']}" for r in results}) or ["n/a"]
    torch_note = f", torch {results[0]['torch']} with {results[0]['threads']} threads" if results else ""
    import_note = (f" (importing torch, torchvision and facetl alone takes ~"
                   f"{min(r['import_rss'] for r in results):.0f} MiB; 'over imports' is the peak minus that "
                   f"process's own figure after its imports)" if results else "")
    return [
        "## facetl speed benchmark" + (" (--quick)" if args.quick else ""),
        "",
        "- **Random weights** (`weights=none`): ImageNet weights cannot be downloaded on this machine; the "
        "amount of computation is the same, accuracies only show that both pipelines train.",
        "- **facetl starts cold**: FACETL_CACHE is a fresh empty folder for every case, so its total includes "
        "decoding the images and computing the frozen-feature cache (and its checkpoints, test pass, plots "
        "and report). The OS page cache was warmed for both pipelines.",
        f"- reference: PIL open per sample, torchvision transforms, DataLoader num_workers={args.workers}, "
        f"batch {args.batch_size}, full forward through the model every batch, Adam lr {args.lr}, "
        f"BCE-with-logits, validation each epoch, one test pass.",
        f"- same data ({args.data.name}), split (facetl's split.csv), model (facetl's build_model), "
        f"head {args.head}, seed {args.seed}, augment {','.join(args.augment) or 'none'}.",
        f"- machine: {os.cpu_count()} CPU cores{torch_note}; facetl device/precision: {'; '.join(devices)}; "
        f"reference precision: {args.reference_precision}; "
        f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (above 0.5 or so, other "
        f"work shares the cores and the times are noisy).",
        "- times in seconds, excluding interpreter start and imports (both processes import torch, torchvision "
        "and facetl before their clocks start); an epoch is training + validation (facetl's history.csv "
        "seconds; its checkpoint writes are listed apart, the reference writes none); ratio = reference / facetl.",
        f"- peak RSS = getrusage ru_maxrss of the case's own fresh process{import_note}; largest child = biggest "
        "DataLoader or decode worker, forked, so it counts pages shared with the parent.",
    ]


def render_table(rows: list[dict], header: list[str]) -> str:
    cols = ["case", "pipeline", "epoch 1 s", "epochs 2..N s/epoch", "total s", "where the time went",
            "peak RSS MiB", "peak anon MiB", "over imports MiB", "largest child MiB", "final val acc", "ref/facetl total",
            "ref/facetl per epoch"]
    from facetl.tables import markdown_table  # here: the measuring process itself imports no more of facetl

    return "\n".join(header + ["", *markdown_table(cols, [[row.get(c, "") for c in cols] for row in rows])]) + "\n"


def table_rows(case: Case, ref: dict | None, fac: dict | None, error: str | None) -> list[dict]:
    label = f"{case.name} ({case.img_size}px, {'all' if case.limit is None else case.limit} images, " \
            f"{case.epochs} ep)"
    if error:
        return [{"case": label, "pipeline": "FAILED", "where the time went": error}]
    rows = []
    for pipeline, r in (("reference", ref), ("facetl", fac)):
        first, rest = epoch_times(r["epoch_seconds"])
        if pipeline == "facetl":
            phases = ("setup", "decode", "cache", "checkpoints", "report")
            other = r["total"] - sum(r[p] for p in phases) - sum(r["epoch_seconds"])
            where = (f"files+model {r['setup']:.1f}, decode+split {r['decode']:.1f}, feature cache "
                     f"{r['cache']:.1f}, epochs {sum(r['epoch_seconds']):.1f}, checkpoints "
                     f"{r['checkpoints']:.1f}, plots+report {r['report']:.1f}, test pass+rest {other:.1f}")
        else:
            where = (f"model+loaders {r['setup']:.1f}, epochs {sum(r['epoch_seconds']):.1f}, "
                     f"test pass {r['test']:.1f}")
        rows.append({"case": label, "pipeline": pipeline, "epoch 1 s": f"{first:.2f}",
                     "epochs 2..N s/epoch": f"{rest:.2f}" if len(r["epoch_seconds"]) > 1 else "-",
                     "total s": f"{r['total']:.1f}", "where the time went": where,
                     "peak RSS MiB": f"{r['rss']:.0f}", "peak anon MiB": f"{r['anon_peak']:.0f}",
                     "over imports MiB": f"{r['rss'] - r['import_rss']:.0f}",
                     "largest child MiB": f"{r['child_rss']:.0f}",
                     "final val acc": f"{r['val_acc']:.3f}"})
    per_epoch = epoch_times(ref["epoch_seconds"])[1] / epoch_times(fac["epoch_seconds"])[1]
    rows[1]["ref/facetl total"] = f"{ref['total'] / fac['total']:.2f}x"
    rows[1]["ref/facetl per epoch"] = f"{per_epoch:.0f}x" if per_epoch >= 100 else f"{per_epoch:.1f}x"
    return rows


# --------------------------------------------------------------------------------------------------

def warm_page_cache(root: Path) -> int:
    """Read every file once so neither pipeline pays for cold disk reads the other does not."""
    count = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass
            count += 1
    return count


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="all", help=f"comma-separated: {', '.join(list(GROUPS) + list(CASES))}")
    p.add_argument("--epochs", type=int, help="override every case's epochs")
    p.add_argument("--limit", type=int, help="override every case's image count (0: all images)")
    p.add_argument("--img-size", type=int, help="override every case's image size")
    p.add_argument("--quick", action="store_true", help="tiny everything (about a minute): checks the script")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="facetl's --precision (auto: bf16 frozen part on CPUs with native bf16, fp32 training)")
    p.add_argument("--reference-precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="the reference's autocast (default fp32, as the studies ran)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--head", default="linear", choices=["linear", "mlp", "vgg"])
    p.add_argument("--augment", default="", help="e.g. flip (reference: RandomHorizontalFlip)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="reference DataLoader num_workers (default: cores, at most 4)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="class-folder root (default SMILEsmileD)")
    p.add_argument("--out", type=Path, help="keep run folders here (default: a temporary folder)")
    p.add_argument("--markdown", type=Path, help="also write the table to this markdown file")
    p.add_argument("--run-one", help=argparse.SUPPRESS)  # internal: one pipeline in a subprocess
    args = p.parse_args(argv)
    args.augment = [a for a in args.augment.split(",") if a]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.run_one:
        child_main(args.run_one)
        return
    cases = select_cases(args)
    if args.out is not None:
        taken = [str(args.out / c.name) for c in cases if (args.out / c.name).exists()]
        if taken:  # facetl refuses to overwrite a run folder; say so before spending any time
            sys.exit(f"--out already holds {', '.join(taken)}; choose a new --out")
    out = args.out or Path(tempfile.mkdtemp(prefix="facetl-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cache_root = Path(tempfile.mkdtemp(prefix="facetl-bench-cache-"))
    print(f"warming the OS page cache: {warm_page_cache(args.data)} files under {args.data}", flush=True)

    # No torch in this process: a child started by vfork+exec inherits the parent's ru_maxrss.
    rows, results, failed = [], [], False
    load_before = os.getloadavg()[0]
    try:
        for case in cases:
            folder = out / case.name
            folder.mkdir(parents=True, exist_ok=True)
            # a fresh, empty facetl cache per case: decoding and feature caching count in facetl's total
            env = {**os.environ, "FACETL_CACHE": str(cache_root / case.name)}
            config = case_config(case, args, folder / "facetl")
            print(f"[{case.name}] facetl ...", flush=True)
            try:
                fac = run_in_subprocess("facetl", {"config": config}, env, folder / "facetl.log")
                print(f"[{case.name}] facetl {fac['total']:.1f}s; reference ...", flush=True)
                ref_config = {**config, "out": str(folder / "reference")}
                ref = run_in_subprocess("reference", {
                    "config": ref_config, "split_file": str(Path(fac["folder"]) / "split.csv"),
                    "class_names": fac["class_names"], "workers": args.workers, "device": fac["device"],
                    "precision": args.reference_precision}, env, folder / "reference.log")
                print(f"[{case.name}] reference {ref['total']:.1f}s", flush=True)
                results.append(fac)
                rows += table_rows(case, ref, fac, None)
            except RuntimeError as exc:
                print(exc, file=sys.stderr, flush=True)
                failed = True
                rows += table_rows(case, None, None, str(exc))
            finally:
                shutil.rmtree(cache_root / case.name, ignore_errors=True)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)

    header = table_header(args, results, load_before, os.getloadavg()[0])
    table = render_table(rows, header)
    print()
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table, encoding="utf-8")
        print(f"table written to {args.markdown}")
    if args.out is None and not failed:
        shutil.rmtree(out, ignore_errors=True)
    else:  # kept: asked for, or holding the log of a failure
        print(f"run folders and logs in {out}")


if __name__ == "__main__":
    main()
