"""The `facetl` command: parse, call the library, print. Bad input ends in one line and exit code 2."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from facetl.config import FIELDS, STRATEGY_HELP, TrainConfig, build_config, load_yaml
from facetl.errors import FacetlError

FLAG_HELP = {
    "data": "class-folder root, CSV attribute table or list_attr_celeba.txt",
    "images": "image folder for a table (default: the table's folder)",
    "target": "attribute column to learn from a table (Smiling, Male, ...)",
    "positive": "positive class of two (default: second in sorted order; for tables the value 1)",
    "split": "train,val,test fractions (default 0.8,0.1,0.1)",
    "split_file": "reuse an existing split.csv",
    "limit": "use a stratified random subset of this many images",
    "duplicates": "identical files filed under different labels: keep | drop | error (default drop)",
    "img_size": "resize images to N x N (default: the backbone's pretrained size)",
    "normalize": "MEAN,STD (or 3 means, 3 stds) instead of the backbone's",
    "augment": "training augmentation: flip, jitter, rotate[:DEGREES], none (comma separated)",
    "backbone": "vgg16, vgg19, mobilenet_v2 or any timm model name",
    "weights": "imagenet | none | auto (ImageNet if available, else none) | PATH (state dict or run folder)",
    "head": "linear | mlp (4096-1024) | vgg (4096-4096)",
    "strategy": STRATEGY_HELP,
    "select": "best epoch by val_loss or val_acc",
    "precision": "auto | fp32 | bf16 | fp16",
    "cache": "use the decoded-image and frozen-feature caches",
    "cache_views": "augmented views stored per training image when augmenting with jitter/rotate",
    "cache_dir": "cache folder (default $FACETL_CACHE or ~/.cache/facetl)",
    "workers": "processes decoding images (default: one per core)",
    "out": "run folder",
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage plus a line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file supplying any of these options; flags override it")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if name == "cache":
            parser.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                                default=argparse.SUPPRESS, help="recompute everything; no decoded or feature cache")
            continue
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                            nargs="+" if "list" in str(field.type) else None,
                            help=f"{FLAG_HELP.get(name, '')} (default: {getattr(DEFAULTS, name)})")


DEFAULTS = TrainConfig()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    for name in FIELDS:
        if hasattr(args, name):
            value = getattr(args, name)
            if isinstance(value, list):
                value = ",".join(value)
            values[name] = value
    return build_config(values)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="facetl", description="Transfer learning of face classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    train = sub.add_parser("train", help="train one model into a run folder")
    add_config_flags(train)
    train.add_argument("--resume", metavar="RUN", help="continue a killed run from its last finished epoch")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N processes on this machine (launches torchrun; one per GPU, or CPU gloo)")

    evaluate = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on a split")
    evaluate.add_argument("run")
    evaluate.add_argument("--split", choices=["val", "test"], default="test")
    evaluate.add_argument("--allow-changed-data", action="store_true",
                          help="evaluate even if data files changed since the split was made")

    sweep = sub.add_parser("sweep", help="every combination of a grid, on one split, with a results table")
    add_config_flags(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a configuration key and its values; repeat for more keys")

    predict = sub.add_parser("predict", help="label new images with a run")
    predict.add_argument("run")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--out", help="write path,label,probability CSV here instead of a table")

    inspect = sub.add_parser("inspect", help="class balance, sample grid, unreadable and duplicate files")
    inspect.add_argument("--data", required=True)
    inspect.add_argument("--images")
    inspect.add_argument("--target")
    inspect.add_argument("--out", required=True)
    inspect.add_argument("--cache-dir")

    cache = sub.add_parser("cache", help="list or clear facetl's caches")
    cache.add_argument("action", choices=["ls", "clear"])
    cache.add_argument("--cache-dir")

    backbones = sub.add_parser("backbones", help="list backbones, or one backbone's layers and blocks")
    backbones.add_argument("name", nargs="?")
    backbones.add_argument("--timm", metavar="PATTERN", help="list timm model names matching PATTERN (e.g. '*mobilenet*')")

    demo = sub.add_parser("demo", help="study 4: MobileNetV2 smile detector on SMILEsmileD, frozen vs last-block")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--limit", type=int, help="use a subset of this many images")
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args) or 0
    except FacetlError as exc:
        print(f"facetl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facetl {args.command}: interrupted; finished epochs are kept (facetl train --resume RUN)",
              file=sys.stderr)
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
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise FacetlError(f"nothing to resume: {run} has no config.yaml")
        config = build_config(load_yaml(run / "config.yaml"))
        config.out = str(run)
    else:
        config = config_from_args(args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args, config)
    _oom_guard(lambda: fit(config, resume=bool(args.resume), progress=sys.stderr.isatty()), config.batch_size)
    return 0


def launch_torchrun(args, config: TrainConfig) -> int:
    """Check the input here (one clear line on bad input), then run this same command under torchrun."""
    from facetl.data.prepare import read_samples
    from facetl.models.registry import create_backbone

    config.check()
    read_samples(config)
    create_backbone(config.backbone, "none")
    if not config.out:
        config.out = _default_out(config)
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


def _oom_guard(run, batch_size: int):
    import torch

    try:
        return run()
    except torch.OutOfMemoryError:
        raise FacetlError(f"the GPU ran out of memory with --batch-size {batch_size}; try "
                          f"--batch-size {max(1, batch_size // 2)}") from None


def cmd_evaluate(args) -> int:
    from facetl.evaluate.run import evaluate_run

    metrics, out = evaluate_run(args.run, args.split, progress=sys.stderr.isatty(),
                                allow_changed_data=args.allow_changed_data)
    print(f"{args.split}: accuracy {metrics['accuracy']:.4f}  precision {metrics['precision']:.4f}  recall "
          f"{metrics['recall']:.4f}  F1 {metrics['f1']:.4f}  ROC-AUC {_num(metrics['roc_auc'])}  "
          f"({metrics['n_images']} images)")
    print(f"report: {out / 'report.md'}")
    return 0


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def cmd_sweep(args) -> int:
    from facetl.train.sweep import parse_grid, sweep

    config = config_from_args(args)
    if not config.out:
        raise FacetlError("sweep needs --out DIR for its runs and results table")
    grid = parse_grid(args.grid)
    sweep(config, grid, config.out, progress=sys.stderr.isatty())
    print((Path(config.out) / "results.md").read_text())
    return 0


def cmd_predict(args) -> int:
    from facetl.predict import predict
    from facetl.runfolder import atomic_write_csv

    rows, skipped = predict(args.run, args.images)
    if not rows:
        raise FacetlError("none of the images could be read")
    if args.out:
        atomic_write_csv(args.out, ["path", "label", "probability"], [(p, l, f"{q:.6f}") for p, l, q in rows])
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        width = min(max(len(r[0]) for r in rows), 80)
        print(f"{'path':<{width}}  {'label':<20}  probability")
        for path, label, prob in rows:
            print(f"{path:<{width}}  {label:<20}  {prob:.4f}")
    return 1 if skipped else 0


def cmd_inspect(args) -> int:
    from facetl.data.inspection import inspect_dataset
    from facetl.data.samples import load_samples
    from facetl.data.store import default_cache_dir

    samples = load_samples(args.data, args.images, args.target)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    summary = inspect_dataset(samples, args.out, cache, progress=sys.stderr.isatty())
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
    from facetl.data.store import default_cache_dir

    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    entries = [p for kind in ("images", "features") for p in sorted((root / kind).glob("*")) if p.is_dir()]
    if args.action == "clear":
        for kind in ("images", "features"):
            shutil.rmtree(root / kind, ignore_errors=True)
        print(f"cleared {len(entries)} cache entries in {root}")
        return 0
    total = 0
    for entry in entries:
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        total += size
        print(f"{entry.parent.name:<9} {entry.name:<28} {size / 2**20:>10.1f} MiB")
    print(f"{len(entries)} entries, {total / 2**20:.1f} MiB in {root}")
    return 0


def cmd_backbones(args) -> int:
    from facetl.models.registry import list_backbones

    if args.timm:
        import timm

        print("\n".join(timm.list_models(args.timm)))
        return 0
    if not args.name:
        print("facetl backbones: " + ", ".join(list_backbones()) + "; and any timm model name (--timm PATTERN)")
        return 0
    from facetl.models.registry import create_backbone
    from facetl.models.strategies import backbone_layers

    backbone = create_backbone(args.name, "none")
    marked = set()
    for i, (name, module) in enumerate(backbone_layers(backbone)):
        unit = int(name.split(".")[1])
        marker = "  <- block starts" if unit in backbone.block_starts and unit not in marked else ""
        marked.add(unit)
        print(f"{i:>4}  {name:<40} {type(module).__name__}{marker}")
    print(f"input size {backbone.input_size}, mean {backbone.mean}, std {backbone.std}")
    return 0


def cmd_demo(args) -> int:
    from facetl.data.download import smiles_dataset
    from facetl.data.store import default_cache_dir
    from facetl.train.sweep import sweep

    config_path = Path(__file__).resolve().parent.parent / "configs" / "study4_smile_mobilenetv2.yaml"
    values = load_yaml(config_path) if config_path.is_file() else {}
    values.update({"data": str(smiles_dataset(default_cache_dir())), "weights": "auto", "epochs": args.epochs,
                   "out": args.out})
    if args.limit:
        values["limit"] = args.limit
    config = build_config(values)
    rows = sweep(config, {"strategy": ["frozen", "last-block"]}, args.out, progress=sys.stderr.isatty())
    print()
    print((Path(args.out) / "results.md").read_text())
    if any(r["pretraining"] == "no pretraining" for r in rows):
        print("note: these runs had no pretraining (ImageNet weights were not available here); a frozen "
              "random backbone can only predict the majority class, so compare strategies with ImageNet weights.")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "predict": cmd_predict,
            "inspect": cmd_inspect, "cache": cmd_cache, "backbones": cmd_backbones, "demo": cmd_demo}

if __name__ == "__main__":
    sys.exit(main())
