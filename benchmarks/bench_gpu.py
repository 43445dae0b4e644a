"""The studies at full size on one GPU: what the card can do, the studies' plain pipeline, and facetl, side by side.

Three columns per case, on the same data:
  ceiling  the backbone alone on synthetic tensors already on the device, bf16 autocast, channels_last, at the
           best batch size a short search finds: forward only where the backbone is frozen, forward + backward +
           optimiser step (fused AdamW) for the part that trains (the frozen prefix, if any, forward only).
           What the card can do; nothing of facetl but its model definition.
  plain    the studies' way: PIL open + decode per sample, torchvision Resize/ToTensor/Normalize, a DataLoader
           with workers, fp32, batch 32, the whole model forward every batch, Adam. Measured over a capped number
           of steps (--plain-steps), its full-size wall time projected from that steady rate.
  facetl   `facetl train` (or `facetl sweep`) as a user runs it, in a fresh process, from a cold cache (an empty
           FACETL_CACHE): decoding, frozen features, checkpoints, validation and the final evaluation all count.
           Its wall-time split comes from the run's run.json (wall_seconds) and history.csv.
Cases: VGG-16 at 224 px on a 30,000-image CelebA-shaped table (study 1's config: frozen, last-block, full); study
2's grid (lr 1e-3/1e-4 x frozen/last-block) as one `facetl sweep`, against the seeds' 4 x 1,720 s; MobileNetV2 64 px
grey on all of SMILEsmileD with facetl's recipe (no training key given: the 154 s H200 run of docs/benchmarks.md);
VGG-19 frozen on the celebrity identities (study 3's config; 24 people here, the study had 31).

The data are made from ../shared/datasets into --work (a temporary folder by default), never inside the repository:
the CelebA-shaped set is every celebrity_faces crop upscaled to 224 px, three variants each (as is, mirrored,
mirrored and shifted: no two files alike) up to 30,000, with CelebA's 40 attribute columns from list_attr_celeba.txt.
Weights are random (--weights none): ImageNet weights cannot be downloaded here, and throughput does not depend
on the weight values; accuracies only show that a run trained. Nothing is downloaded.

--budget-s S stops cleanly when S seconds are spent: a running column is cut short (its partial figures kept, a
facetl process stopped) and the rest are listed as not run. Results are written after every column to
--out/bench_gpu.json and --out/bench_gpu.md, so even a killed run leaves what it measured.
--quick: every case tiny (32 px, a few dozen images, one or two epochs), on a CPU too; the tests use it.

    python benchmarks/bench_gpu.py --out /tmp/gpu --budget-s 600            # one GPU lease
    python benchmarks/bench_gpu.py --quick --device cpu --out /tmp/gpu-quick  # checks the script
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's facetl, as the facetl processes it starts use (PYTHONPATH below)
DATASETS = REPO.parent / "shared" / "datasets"
SEED_SECONDS_PER_MODEL = 1_720  # study 2's seeds: about 1,720 s per model (one model took 11,048 s)
COLUMNS = ("ceiling", "plain", "facetl")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# cases

@dataclass(frozen=True)
class Case:
    name: str
    data: str                 # celeba | smiles | identities
    backbone: str
    strategy: str
    img_size: int
    epochs: int               # epochs facetl runs here (the steady rate comes from epochs 2..N)
    study_epochs: int         # the study's epochs, for the projected full-size wall time
    config: str | None        # the study's YAML (None: facetl's recipe, no training key given)
    colour: str = "rgb"
    target: str | None = None
    grid: bool = False        # a `facetl sweep` over study 2's grid instead of one run
    head: str | None = None   # None: the study's (mlp for VGG-16, vgg for VGG-19, linear otherwise)


CASES = [  # in the order they run: the headline figures first, so a short lease measures them
    Case("study2-grid", "celeba", "vgg16", "frozen+last-block", 224, 2, 10, "configs/study2_gender_vgg16.yaml",
         target="Male", grid=True),
    Case("mnv2-64-grey-recipe", "smiles", "mobilenet_v2", "full", 64, 19, 19, None, colour="grey"),
    Case("vgg16-224-frozen", "celeba", "vgg16", "frozen", 224, 2, 10, "configs/study1_smile_vgg16.yaml",
         target="Smiling"),
    Case("vgg16-224-last-block", "celeba", "vgg16", "last-block", 224, 2, 10, "configs/study1_smile_vgg16.yaml",
         target="Smiling"),
    Case("vgg16-224-full", "celeba", "vgg16", "full", 224, 2, 10, "configs/study1_smile_vgg16.yaml",
         target="Smiling"),
    Case("vgg19-224-frozen-identities", "identities", "vgg19", "frozen", 224, 3, 10,
         "configs/study3_identity_vgg19.yaml"),
]
GRID = (("lr", "1e-3,1e-4"), ("strategy", "frozen,last-block"))
QUICK_SIZE, QUICK_IMAGES = 32, 48


def quick_case(case: Case) -> Case:
    """Tiny: 32 px and a linear head (the studies' 25088-4096 heads alone take a CPU tens of seconds a step)."""
    return dataclasses.replace(case, img_size=QUICK_SIZE, epochs=min(case.epochs, 2), head="linear")


# --------------------------------------------------------------------------------------------------
# data, made once into --work

def make_data(work: Path, quick: bool, celeba_images: int, datasets: Path = DATASETS) -> dict:
    """Every data set the cases use: {name: {"args": facetl flags, "items": [(path, label)], "root": Path}}."""
    from multiprocessing import Pool

    faces = sorted((datasets / "celebrity_faces").glob("*/*.jpg"))
    if not faces:
        raise SystemExit(f"no images under {datasets / 'celebrity_faces'}: the cases are made from ../shared/datasets "
                         "(or --datasets, a copy made by --pack)")
    made = {}
    size = QUICK_SIZE if quick else 224
    count = QUICK_IMAGES if quick else celeba_images
    celeba = work / "celeba"
    (celeba / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(str(faces[i % len(faces)]), str(celeba / "images" / f"{i + 1:06d}.jpg"), i // len(faces), size)
            for i in range(count)]
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(write_variant, jobs, chunksize=64)
    names, rows = celeba_attributes(count, datasets)
    with open(celeba / "attributes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", *names])
        for i in range(count):
            writer.writerow([f"{i + 1:06d}.jpg", *rows[i % len(rows)]])
    for target in ("Smiling", "Male"):
        column = names.index(target)
        made[f"celeba:{target}"] = {
            "args": ["--data", str(celeba / "attributes.csv"), "--images", str(celeba / "images"), "--target", target],
            "root": celeba / "images",
            "items": [(f"{i + 1:06d}.jpg", int(rows[i % len(rows)][column] == "1")) for i in range(count)]}
    made["smiles"] = folder_data(datasets / "SMILEsmileD" / "SMILEs", work / "smiles", quick)
    made["identities"] = folder_data(datasets / "celebrity_faces", work / "identities", quick)
    return made


def pack(datasets: Path, target: Path, quality: int = 70) -> None:
    """A copy of what the cases read, small enough to travel to a GPU machine that cannot see ../shared (under
    64 MiB with the repository): SMILEsmileD's JPEGs and CelebA's attribute list as they are, celebrity_faces
    re-encoded at JPEG quality `quality` (about 28 MiB instead of 50; same people, same pixels sizes)."""
    from PIL import Image

    if target.exists():
        raise SystemExit(f"--pack: {target} exists; choose a new folder")
    for path in sorted((datasets / "SMILEsmileD" / "SMILEs").rglob("*.jpg")):
        out = target / path.relative_to(datasets)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
    (target / "celeba_attributes").mkdir(parents=True)
    shutil.copyfile(datasets / "celeba_attributes" / "list_attr_celeba.txt",
                    target / "celeba_attributes" / "list_attr_celeba.txt")
    for path in sorted((datasets / "celebrity_faces").glob("*/*.jpg")):
        out = target / path.relative_to(datasets)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").save(out, format="JPEG", quality=quality)
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"packed {target}: {total / 2**20:.1f} MiB")


def write_variant(job) -> None:
    """One CelebA-shaped image: a face crop upscaled, as is (0), mirrored (1) or mirrored and shifted (2+)."""
    from PIL import Image, ImageOps

    source, target, variant, size = job
    with Image.open(source) as image:
        image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    if variant >= 1:
        image = ImageOps.mirror(image)
    if variant >= 2:
        shift = max(1, size // 40) * (variant - 1)
        image = image.transform(image.size, Image.AFFINE, (1, 0, shift, 0, 1, shift), resample=Image.BILINEAR)
    image.save(target, quality=90)


def celeba_attributes(count: int, datasets: Path) -> tuple[list[str], list[list[str]]]:
    with open(datasets / "celeba_attributes" / "list_attr_celeba.txt") as f:
        f.readline()
        names = f.readline().split()
        rows = []
        for line in f:
            rows.append(line.split()[1:])
            if len(rows) >= count:
                break
    return names, rows


def folder_data(root: Path, copy_to: Path, quick: bool) -> dict:
    """A class-folder data set as is; --quick: 8 images of each of the first three classes, shrunk, copied."""
    from PIL import Image

    classes = sorted({p.parent for p in root.rglob("*.jpg")}, key=str)
    if quick:
        for label, folder in enumerate(classes[:3]):
            out = copy_to / f"class{label}"
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted(folder.glob("*.jpg"))[:QUICK_IMAGES // 3]:
                with Image.open(path) as image:
                    image.convert("RGB").resize((QUICK_SIZE, QUICK_SIZE)).save(out / path.name)
        root = copy_to
    items, names = [], sorted({str(p.parent.relative_to(root)).split("/")[0] for p in root.rglob("*.jpg")})
    for path in sorted(root.rglob("*.jpg")):
        relative = path.relative_to(root)
        items.append((str(relative), names.index(str(relative).split("/")[0])))
    return {"args": ["--data", str(root)], "root": root, "items": items}


def data_for(case: Case, data: dict) -> dict:
    return data[f"celeba:{case.target}"] if case.data == "celeba" else data[case.data]


# --------------------------------------------------------------------------------------------------
# the budget

class Budget:
    def __init__(self, seconds: float | None):
        self.began = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (time.perf_counter() - self.began)

    def spent(self) -> bool:
        return self.left() <= 0


class Stopped(Exception):
    """The budget ran out inside a column; what it measured so far is kept."""


# --------------------------------------------------------------------------------------------------
# ceiling: the backbone alone on synthetic tensors on the device

def build(case: Case, classes: int, strategy: str):
    from facetl.config import build_config
    from facetl.models import build_model

    config = build_config({"data": "x", "backbone": case.backbone, "weights": "none", "img_size": case.img_size,
                           "strategy": strategy, "head": study_head(case)})
    return build_model(config, classes, log=lambda message: None)


def study_head(case: Case) -> str:
    return case.head or {"vgg16": "mlp", "vgg19": "vgg"}.get(case.backbone, "linear")


def run_ceiling(case: Case, classes: int, device, budget: Budget, quick: bool) -> dict:
    import torch

    from facetl.models import TrainablePart

    strategy = "frozen" if case.grid else case.strategy
    built = build(case, classes, strategy)
    model = built.model.to(device, memory_format=torch.channels_last).eval()
    cut = built.plan.cut
    frozen_only = built.plan.first_trainable is None
    part = TrainablePart(model, cut)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda") if params else None

    def step(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if frozen_only:
                with torch.inference_mode():
                    return model(x)
            with torch.no_grad():
                z = model.forward_prefix(x, cut) if cut else x
            part.train()
            loss = part(z.float().contiguous(memory_format=torch.channels_last)).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sizes = [2, 4] if quick else [32, 64, 128, 256, 512, 1024]
    tried, best = [], None
    for batch in sizes:
        if budget.spent():
            break
        try:
            rate = time_steps(step, torch.rand(batch, 3, case.img_size, case.img_size, device=device).contiguous(
                memory_format=torch.channels_last), device, seconds=0.2 if quick else 2.0, budget=budget,
                warm=1 if quick else 3)
        except torch.OutOfMemoryError:
            tried.append({"batch": batch, "images_per_s": None, "note": "out of memory"})
            break
        finally:
            sync(device)
        tried.append({"batch": batch, "images_per_s": rate})
        if best is not None and rate < best["images_per_s"] * 1.03:  # no longer gaining: larger is no better
            break
        if best is None or rate > best["images_per_s"]:
            best = {"batch": batch, "images_per_s": rate}
    return {"kind": "forward only" if frozen_only else ("frozen prefix forward, " if cut else "") +
            "forward + backward + fused AdamW step", "batch_sizes": tried,
            "images_per_s": best["images_per_s"] if best else None, "best_batch": best["batch"] if best else None,
            "precision": "bf16 autocast, channels_last"}


def time_steps(step, x, device, seconds: float, budget: Budget, warm: int = 3) -> float:
    """Images per second of `step` on batch `x`, after `warm` steps, over about `seconds` (at least two steps)."""
    for _ in range(warm):
        step(x)
    sync(device)
    began, done = time.perf_counter(), 0
    while True:
        step(x)
        done += 1
        if done % 5 == 0 or seconds < 1:
            sync(device)
            if done >= 2 and (time.perf_counter() - began >= seconds or budget.spent()):
                break
    sync(device)
    return done * x.shape[0] / (time.perf_counter() - began)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# plain: the studies' pipeline

def run_plain(case: Case, dataset: dict, device, budget: Budget, max_steps: int, workers: int,
              batch: int = 32) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    items = dataset["items"]
    classes = max(label for _, label in items) + 1
    rng = np.random.default_rng(0)
    order = rng.permutation(len(items))
    n_train, n_val = int(len(items) * 0.8), int(len(items) * 0.1)
    train = [items[i] for i in order[:n_train]]
    val = [items[i] for i in order[n_train:n_train + n_val]]
    root = dataset["root"]
    grey = [transforms.Grayscale(3)] if case.colour == "grey" else []
    tf = transforms.Compose([transforms.Resize((case.img_size, case.img_size)), *grey, transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    class Folder(Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            path, label = self.rows[i]
            with Image.open(root / path) as image:
                return tf(image.convert("RGB")), label

    def loader(rows, shuffle):
        return DataLoader(Folder(rows), batch_size=batch, shuffle=shuffle, num_workers=workers,
                          pin_memory=device.type == "cuda", persistent_workers=False)

    strategy = "frozen" if case.grid else case.strategy
    torch.manual_seed(0)
    model = build(case, classes, strategy).model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss() if classes == 2 else nn.CrossEntropyLoss()
    out = {"train_images": len(train), "val_images": len(val), "batch": batch, "workers": workers, "precision": "fp32",
           "steps": 0}
    began = time.perf_counter()
    model.train()
    steady_from, steady_images = None, 0
    for step, (x, y) in enumerate(loader(train, True), start=1):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = loss_fn(logits[:, 0], y.float()) if classes == 2 else loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss)  # the studies read the loss every step
        if step == min(10, max_steps // 2) + 1:
            steady_from = time.perf_counter()
        elif steady_from is not None:
            steady_images += len(y)
        out["steps"] = step
        if step >= max_steps or budget.spent():
            break
    sync(device)
    out["train_seconds"] = time.perf_counter() - began
    if steady_from is not None and steady_images:
        out["images_per_s"] = steady_images / (time.perf_counter() - steady_from)
    if budget.spent():
        out["stopped"] = "budget spent during training steps"
        return out
    began_val, seen = time.perf_counter(), 0
    model.eval()
    with torch.no_grad():
        for x, _ in loader(val[:max_steps * batch], False):
            model(x.to(device))
            seen += len(x)
            if budget.spent():
                break
    sync(device)
    out["val_images_per_s"] = seen / max(time.perf_counter() - began_val, 1e-9)
    return out


def plain_projection(case: Case, plain: dict) -> float | None:
    """The studies' wall time for the case's full size: train and validate every epoch at the measured rates."""
    if not plain.get("images_per_s") or not plain.get("val_images_per_s"):
        return None
    epoch = plain["train_images"] / plain["images_per_s"] + plain["val_images"] / plain["val_images_per_s"]
    return epoch * case.study_epochs


# --------------------------------------------------------------------------------------------------
# facetl: the command as a user runs it

def facetl_command(case: Case, dataset: dict, run: Path, device: str, quick: bool, compile_: bool = False
                   ) -> list[str]:
    command = [sys.executable, "-m", "facetl", "sweep" if case.grid else "train"]
    if case.config:
        command += ["--config", str(REPO / case.config)]
    command += [*dataset["args"], "--weights", "none", "--device", device, "--out", str(run),
                "--backbone", case.backbone, "--img-size", str(case.img_size)]
    if case.config or quick:  # the recipe case leaves the epochs to the recipe (19 for all of SMILEsmileD)
        command += ["--epochs", str(case.epochs)]
    if case.grid:
        for key, values in GRID:
            command += ["--grid", f"{key}={values}"]
    else:
        command += ["--strategy", case.strategy]
    if case.colour != "rgb":
        command += ["--colour", case.colour]
    if case.head:
        command += ["--head", case.head]
    if compile_:
        command += ["--compile"]
    return command


def run_facetl(case: Case, dataset: dict, folder: Path, device: str, budget: Budget, quick: bool,
               compile_: bool = False) -> dict:
    run = folder / "run"
    cache = folder / "cache"
    command = facetl_command(case, dataset, run, device, quick, compile_)
    env = {**os.environ, "FACETL_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    began = time.perf_counter()
    with open(folder / "facetl.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        memory = GpuMemory(process.pid) if device != "cpu" else None
        stopped = wait_within(process, budget)
    wall = time.perf_counter() - began
    out = {"command": " ".join(shlex.quote(c) for c in command), "wall_seconds": wall, "exit": process.returncode,
           "peak_gpu_mib": memory.stop() if memory else None}
    if stopped:
        out["stopped"] = "budget spent: facetl stopped"
    elif process.returncode != 0:
        tail = (folder / "facetl.log").read_text(errors="replace").strip().splitlines()[-3:]
        out["failed"] = " / ".join(tail)[-400:]
    runs = [run] if not case.grid else sorted(p for p in run.iterdir() if (p / "history.csv").is_file()) \
        if run.is_dir() else []
    out["runs"] = [read_run(r) for r in runs if (r / "history.csv").is_file() or (r / "run.json").is_file()]
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache per case; the figures are read
    return out


def wait_within(process: subprocess.Popen, budget: Budget) -> bool:
    """Wait for the process; stop its whole group when the budget is spent. True when it was stopped."""
    while process.poll() is None:
        if budget.spent():
            for sig, grace in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return True
        time.sleep(0.2)
    return False


def read_run(run: Path) -> dict:
    """What a run folder says of its speed: the wall-time split (run.json), epoch seconds (history.csv), the
    train.log's data-path line (was the feature cache built, held on the GPU?) and the test metrics."""
    out: dict = {"folder": run.name}
    if (run / "history.csv").is_file():
        with open(run / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
        out["epoch_seconds"] = [float(h["seconds"]) for h in history]
        out["val_acc"] = float(history[-1]["val_acc"]) if history else None
    if (run / "run.json").is_file():
        record = json.loads((run / "run.json").read_text())
        out["wall"] = record.get("wall_seconds", {})
        out["device"] = (record.get("trained_with") or {}).get("device")
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
        out["test_acc"] = metrics.get("accuracy")
    log = (run / "train.log").read_text(errors="replace") if (run / "train.log").is_file() else ""
    for line in log.splitlines():
        for key, marker in (("data_path", "data path: "), ("wall_line", "wall time: "), ("optimiser", "optimiser ")):
            if marker in line and key not in out:
                out[key] = line.split(marker, 1)[1].strip()[:200]
    if (run / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text())
        out["batch_size"], out["strategy"], out["images"] = config.get("batch_size"), config.get("strategy"), None
    if (run / "split.csv").is_file():
        with open(run / "split.csv", newline="") as f:
            splits = [row["split"] for row in csv.DictReader(f)]
        out["images"] = {s: splits.count(s) for s in ("train", "val", "test")}
    return out


def facetl_rates(run: dict) -> dict:
    """Steady images/s of training (epochs 2..N, validation taken out) and of the frozen-feature pass."""
    rates = {}
    images, seconds, wall = run.get("images") or {}, run.get("epoch_seconds") or [], run.get("wall") or {}
    if images and len(seconds) > 1 and wall:
        validation_share = wall.get("validation", 0.0) / max(len(seconds), 1)
        steady = sum(seconds[1:]) / len(seconds[1:]) - validation_share
        rates["train_images_per_s"] = images["train"] / steady if steady > 0 else None
    elif images and seconds:
        rates["train_images_per_s"] = images["train"] / seconds[0]
    if images and wall.get("frozen features", 0) > 0:
        rates["feature_images_per_s"] = (images["train"] * (2 if "flipped" in run.get("data_path", "") else 1)
                                         + images["val"] + images["test"]) / wall["frozen features"]
    # the part that runs on the GPU: the frozen-feature pass when the backbone is frozen and cached, else training
    frozen_cached = "features cached" in run.get("data_path", "") and "frozen" in run.get("strategy", "frozen")
    rates["gpu_part_images_per_s"] = rates.get("feature_images_per_s") if frozen_cached else \
        rates.get("train_images_per_s")
    return rates


class GpuMemory:
    """Highest GPU memory nvidia-smi shows for one process (its CUDA context and allocator cache included). Where
    nvidia-smi cannot see processes (in some containers), the card's used memory over what it was at the start."""

    QUERIES = (["--query-compute-apps=pid,used_memory"], ["--query-gpu=memory.used"])

    def __init__(self, pid: int):
        self.pid, self.peak, self.card_peak, self._stop = pid, None, None, threading.Event()
        self._thread = None
        if shutil.which("nvidia-smi"):
            self.baseline = self._card()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _query(self, fields: list[str]) -> list[list[str]]:
        text = subprocess.run(["nvidia-smi", *fields, "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=5).stdout
        return [[part.strip() for part in line.split(",")] for line in text.splitlines() if line.strip()]

    def _card(self) -> int | None:
        try:
            return sum(int(row[0]) for row in self._query(self.QUERIES[1]))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _sample(self):
        while not self._stop.is_set():
            try:
                for pid, used in self._query(self.QUERIES[0]):
                    if int(pid) == self.pid:
                        self.peak = max(self.peak or 0, int(used))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            card = self._card()
            if card is not None:
                self.card_peak = max(self.card_peak or 0, card)
            self._stop.wait(0.25)

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.peak is None and self.card_peak is not None and self.baseline is not None:
            return self.card_peak - self.baseline
        return self.peak


# --------------------------------------------------------------------------------------------------
# one case, three columns; results written after each

def measure_case(case: Case, dataset: dict, args, device, budget: Budget, results: dict, save) -> None:
    import torch

    entry = results["cases"][case.name]
    classes = max(label for _, label in dataset["items"]) + 1
    for column in COLUMNS:
        if column == "ceiling" and case.grid:
            entry[column] = {"status": "see the vgg16-224 cases (the grid's runs are frozen and last-block)"}
            continue
        if budget.spent():
            entry[column] = {"status": "not run: budget spent"}
            continue
        began = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if column == "ceiling":
                figures = run_ceiling(case, classes, device, budget, args.quick)
            elif column == "plain":
                figures = run_plain(case, dataset, device, budget, args.plain_steps, args.workers, args.plain_batch)
                figures["projected_study_seconds"] = plain_projection(case, figures)
            else:
                folder = args.work / "runs" / case.name
                folder.mkdir(parents=True, exist_ok=True)
                figures = run_facetl(case, dataset, folder, args.device_name, budget, args.quick, args.compile)
            status = figures.pop("stopped", None) or ("failed: " + figures["failed"] if "failed" in figures else "done")
        except Exception as exc:  # noqa: BLE001 - one column failing must not lose the others' figures
            figures, status = {}, f"failed: {type(exc).__name__}: {exc}"[:400]
        if column != "facetl" and device.type == "cuda":
            figures["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        figures["seconds"] = time.perf_counter() - began
        entry[column] = {"status": status, **figures}
        save()


def environment(args, device) -> dict:
    import torch

    env = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "torch": torch.__version__,
           "cuda": torch.version.cuda, "device": str(device), "cpus": os.cpu_count(),
           "weights": "none: ImageNet weights are unavailable here; throughput does not depend on the weight values",
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick, "budget_s": args.budget_s}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["card"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["card"] = "none (CPU)"
    return env


# --------------------------------------------------------------------------------------------------
# the report

def rate(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def seconds(value) -> str:
    return f"{value:,.1f}" if isinstance(value, (int, float)) else "-"


def column_cells(case: Case, column: str, figures: dict) -> list[str]:
    """images/s, wall s, where the time goes, peak GPU MiB, status."""
    status = figures.get("status", "not run")
    if status.startswith(("not run", "see ")):
        return ["-", "-", "-", "-", status]
    memory = rate(figures.get("peak_gpu_mib"))
    if column == "ceiling":
        tried = ", ".join(f"{t['batch']}: {rate(t['images_per_s'])}" for t in figures.get("batch_sizes", []))
        return [rate(figures.get("images_per_s")), seconds(figures.get("seconds")),
                f"{figures.get('kind', '')}; best batch {figures.get('best_batch', '-')} (images/s by batch: {tried})",
                memory, status]
    if column == "plain":
        where = (f"{figures.get('steps', 0)} steps of batch {figures.get('batch')} measured ({figures.get('workers')} workers); validation "
                 f"{rate(figures.get('val_images_per_s'))} images/s; projected {case.study_epochs} epochs of "
                 f"{figures.get('train_images', '-')} + {figures.get('val_images', '-')} images: "
                 f"{seconds(figures.get('projected_study_seconds'))} s")
        if case.grid and figures.get("projected_study_seconds"):
            where += (f"; the grid, at the frozen runs' rate for all four (a lower bound): "
                      f"{seconds(4 * figures['projected_study_seconds'])} s")
        return [rate(figures.get("images_per_s")), seconds(figures.get("seconds")), where, memory, status]
    runs = figures.get("runs", [])
    parts, rates = [], []
    for run in runs:
        r = facetl_rates(run)
        rates.append(r)
        wall = ", ".join(f"{k} {v:.1f}" for k, v in (run.get("wall") or {}).items())
        parts.append(f"{run['folder'] + ': ' if case.grid else ''}{wall or 'no run.json (stopped)'}; final evaluation "
                     f"and total in train.log: {run.get('wall_line', '-')}; batch {run.get('batch_size', '-')}; "
                     f"{run.get('data_path', '')}; optimiser {run.get('optimiser', '-')}; frozen-part pass {rate(r.get('feature_images_per_s'))} images/s; "
                     f"test acc {run.get('test_acc', '-')}")
    train = [r.get("gpu_part_images_per_s") for r in rates if r.get("gpu_part_images_per_s")]
    steady = min(train) if train else None
    if case.grid:
        projected = sum(grid_projection(run) or 0 for run in runs)
        parts.append(f"grid wall {seconds(figures.get('wall_seconds'))} s for {case.epochs} epochs per run; projected "
                     f"to {case.study_epochs} epochs: {seconds(projected)} s; the seeds: 4 x "
                     f"{SEED_SECONDS_PER_MODEL:,} = {4 * SEED_SECONDS_PER_MODEL:,} s")
    return [rate(steady), seconds(figures.get("wall_seconds")), " / ".join(parts) or "-", memory, status]


def grid_projection(run: dict) -> float | None:
    """A grid run's wall time at the study's 10 epochs: its own, plus the later epochs at its steady epoch time."""
    seconds_ = run.get("epoch_seconds") or []
    wall = run.get("wall") or {}
    if not seconds_ or not wall:
        return None
    steady = sum(seconds_[1:]) / len(seconds_[1:]) if len(seconds_) > 1 else seconds_[0]
    return sum(wall.values()) + steady * max(0, 10 - len(seconds_))


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["## GPU benchmark (benchmarks/bench_gpu.py)" + (" --quick: the figures mean nothing" if env["quick"]
                                                            else ""), "",
             f"- card: {env['card']}; torch {env['torch']}, CUDA {env['cuda']}, {env['cpus']} CPU cores; "
             f"started {env['started']}",
             f"- command: `{env['command']}`",
             f"- weights: {env['weights']}",
             "- ceiling: backbone alone, synthetic tensors on the device, bf16 autocast, channels_last, best batch "
             "size; frozen: forward only; training: forward + backward + fused AdamW step (frozen prefix forward only)",
             "- plain: PIL decode per sample, torchvision transforms, DataLoader with workers, fp32, batch 32, whole "
             "model forward every batch, Adam; measured over the first steps, projected to the study's epochs",
             "- facetl: `facetl train` (the grid: `facetl sweep`) as a user runs it, cold cache; images/s = the part "
             "that runs on the GPU: training images per second of epochs 2..N with validation taken out, or, for a "
             "frozen backbone whose features are cached, the frozen-feature pass (the slowest run of a grid)",
             "- peak GPU MiB: ceiling and plain, torch.cuda.max_memory_allocated; facetl, nvidia-smi's figure for its "
             "process (CUDA context and allocator cache included), or where nvidia-smi cannot see processes, the "
             "card's used memory over its level when facetl started",
             f"- status: {results['status']}", "",
             "| case | column | images/s | wall s | where the time goes | peak GPU MiB | status |",
             "|---|---|---|---|---|---|---|"]
    for case in results["case_list"]:
        entry = results["cases"][case.name]
        for column in COLUMNS:
            cells = column_cells(case, column, entry.get(column, {"status": "not run"}))
            lines.append("| " + " | ".join([case.name if column == "ceiling" else "", column, *cells]) + " |")
        ceiling, facetl = entry.get("ceiling", {}), entry.get("facetl", {})
        steady = column_cells(case, "facetl", facetl)[0] if facetl.get("runs") else "-"
        if ceiling.get("images_per_s") and steady != "-":
            ratio = float(steady.replace(",", "")) / ceiling["images_per_s"]
            lines.append(f"| | facetl / ceiling | {ratio:.2f} | | the GPU part's images/s against the ceiling "
                         "(goal: at least 0.8) | | |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> None:
    """JSON and Markdown, each written whole to a temporary name, then renamed: never half a file."""
    out.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in results.items() if k != "case_list"}
    plain["cases_in_order"] = [c.name for c in results["case_list"]]
    for name, text in (("bench_gpu.json", json.dumps(plain, indent=1, default=str)),
                       ("bench_gpu.md", render_markdown(results))):
        part = out / (name + ".part")
        part.write_text(text)
        os.replace(part, out / name)


# --------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, help="where bench_gpu.json and bench_gpu.md go (required unless --pack)")
    p.add_argument("--datasets", type=Path, default=DATASETS, help="the shared datasets (default ../shared/datasets)")
    p.add_argument("--pack", type=Path, help="only write a compact copy of what the cases read to this new folder "
                   "(to carry to a GPU machine), then stop")
    p.add_argument("--work", type=Path, help="data and run folders (default: a temporary folder, removed at the end)")
    p.add_argument("--budget-s", type=float, help="stop cleanly after this many seconds, writing what was measured")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="every case tiny, on a CPU too: checks the script")
    p.add_argument("--cases", default="all", help="comma-separated names (default all): " +
                   ", ".join(c.name for c in CASES))
    p.add_argument("--celeba-images", type=int, default=30_000, help="size of the CelebA-shaped set")
    p.add_argument("--plain-steps", type=int, default=150, help="training steps the plain pipeline is timed over")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="plain DataLoader workers")
    p.add_argument("--compile", action="store_true", help="facetl runs with --compile (torch.compile of what trains)")
    args = p.parse_args(argv)
    args.plain_batch = 32
    if args.quick:
        args.plain_steps, args.plain_batch = min(args.plain_steps, 4), 4
        args.workers = min(args.workers, 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pack:
        pack(args.datasets, args.pack)
        return 0
    if args.out is None:
        raise SystemExit("--out DIR is required: where bench_gpu.json and bench_gpu.md go")
    names = [c.name for c in CASES] if args.cases == "all" else [n.strip() for n in args.cases.split(",")]
    unknown = [n for n in names if n not in {c.name for c in CASES}]
    if unknown:
        raise SystemExit(f"unknown case {unknown[0]!r}; choose from {', '.join(c.name for c in CASES)}")
    cases = [quick_case(c) if args.quick else c for c in CASES if c.name in names]
    budget = Budget(args.budget_s)
    import torch

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    args.device_name = device.type
    keep_work = args.work is not None
    args.work = args.work or Path(tempfile.mkdtemp(prefix="facetl-bench-gpu-"))
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(args, device), "status": "running", "case_list": cases,
               "cases": {c.name: {} for c in cases}}

    def save():
        write_results(results, args.out)

    save()
    try:
        began = time.perf_counter()
        data = make_data(args.work, args.quick, args.celeba_images, args.datasets)
        results["environment"]["data_seconds"] = round(time.perf_counter() - began, 1)
        for case in cases:
            print(f"[{case.name}] {budget.left():.0f} s of budget left" if args.budget_s else f"[{case.name}]",
                  flush=True)
            measure_case(case, data_for(case, data), args, device, budget, results, save)
        results["status"] = "stopped: budget spent; later columns not run" if budget.spent() else "complete"
    except KeyboardInterrupt:
        results["status"] = "interrupted"
    finally:
        save()
        if not keep_work:
            shutil.rmtree(args.work, ignore_errors=True)
    print(render_markdown(results))
    print(f"written: {args.out / 'bench_gpu.json'}, {args.out / 'bench_gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
