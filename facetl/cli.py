"""The `facetl` command: a table of the commands, each one module of facetl/commands/ that declares its own
arguments and runs them (NAME, SUMMARY, EXAMPLES, optional INTERRUPTED, add_arguments(parser), run(args)).
Only the module of the command given is imported. Bad input ends in one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
from importlib.metadata import PackageNotFoundError, version
import sys
import warnings
from pathlib import Path

from facetl.config import tracked_together
from facetl.errors import FacetlError
from facetl.flags import HelpFormatter, Parser, add_config_flags, config_from_args, examples_epilog, whole_number
from facetl.launch.signals import terminate_as_interrupt
from facetl.outputs import refuse_misplaced

# The commands, in `facetl --help`'s order: facetl/commands/<module>.py each (lr_find.py is `facetl lr-find`).
MODULES = ("train", "lr_find", "evaluate", "predict", "explain", "faces", "inspect", "cache", "backbones", "export",
           "demo", "serve")


def command_module(name: str):
    return importlib.import_module("facetl.commands." + name.replace("-", "_"))


def command_word(argv: list[str]) -> str | None:
    """The command given; "" when there is none and no help is asked for (--version): no command is imported."""
    word = next((word for word in argv if not word.startswith("-")), None)
    return word if word is not None or not argv or {"-h", "--help"} & set(argv) else ""


SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
# Two or three commands that work, ending each subcommand's --help; every one is also in the README or a docs
# page (a test checks both), run from the repository root, and they build on each other: train makes runs/smile first.
EXAMPLES = {
    "sweep": [(f"facetl sweep --config configs/study4_smile_mobilenetv2.yaml --data {SMILES} "
               "--grid strategy=frozen,last-block --out runs/study4", "study 4: two strategies, one split"),
              (f"facetl sweep --data {SMILES} --weights auto --grid lr=1e-3,1e-4 --folds 5 --out runs/smile-lr",
               "two learning rates, each cross-validated over 5 folds")],
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
}


def installed_version() -> str:
    try:
        return version("facetl")
    except PackageNotFoundError:  # `python -m facetl` from a source tree on PYTHONPATH: every command still runs
        return "(not installed: run from its source tree)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or, with `only`, that command's whole and the others' names only (no imports)."""
    parser = Parser(prog="facetl", description="Transfer learning of face classifiers.")
    parser.add_argument("--version", action="version", version=f"facetl {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in MODULES:
        if only in (None, name.replace("_", "-")):
            add_command(sub, command_module(name))
        else:
            sub.add_parser(name.replace("_", "-"))
    for add in (_add_training, _add_search):
        add(sub)
    for name, command in sub.choices.items():  # --help ends with examples, kept as written
        if name in EXAMPLES:
            command.epilog, command.formatter_class = examples_epilog(EXAMPLES[name]), HelpFormatter
    return parser


def add_command(sub, module) -> argparse.ArgumentParser:
    parser = sub.add_parser(module.NAME, help=module.SUMMARY, description=module.SUMMARY,
                            epilog=examples_epilog(module.EXAMPLES), formatter_class=HelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(command_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_word(argv))
    args = parser.parse_args(argv)
    args.argv = argv
    if not args.command:
        parser.print_help()
        return 2
    module = getattr(args, "command_module", None)
    run = module.run if module else COMMANDS[args.command]
    kept = getattr(module, "INTERRUPTED", None) if module else INTERRUPTED.get(args.command)
    try:
        with terminate_as_interrupt():  # scancel, a time limit, `kill`: each command stops as on Ctrl-C
            return run(args) or 0
    except FacetlError as exc:
        print(f"facetl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
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


def _add_training(sub) -> None:
    """sweep: a grid of runs."""
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
INTERRUPTED = {"sweep": "finished runs are kept; the same command goes on from there",
               "tune": "finished trials are kept in the study; the same command goes on from there"}


def cmd_sweep(args) -> int:
    from facetl.commands.evaluate import training_pictures
    from facetl.commands.sweep import parse_grid, sweep

    if args.status:
        return sweep_status(args)
    config = config_from_args(args)
    if not config.out:
        raise FacetlError("sweep needs --out DIR for its runs and results table")
    config = tracked_together(config, config.out)  # --track: the points are one MLflow parent run's children
    grid = parse_grid(args.grid)
    if args.detach and (args.launcher or "local") != "slurm":
        raise FacetlError("--detach is for --launcher slurm (local jobs end with the sweep)")
    launcher = launcher_from_flags(args, Path(config.out), implied_local=bool(args.parallel) or args.nproc > 1)
    if launcher is not None:
        from facetl.commands.sweep_jobs import launch_sweep

        launch_sweep(config, grid, config.out, launcher, args.nproc, args.detach)
        if args.detach:
            return 0
    elif config.folds:
        from facetl.commands.folds import sweep_folds

        sweep_folds(config, grid, config.out, progress=True, pictures=training_pictures)
    else:
        sweep(config, grid, config.out, progress=True, pictures=training_pictures)
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
    from facetl.commands.evaluate import training_pictures
    from facetl.commands.tune import run_worker, tune, worker_index

    if args.worker:
        run_worker(args.worker, worker_index(args.worker_index), pictures=training_pictures)
        return 0
    config = config_from_args(args)
    if not config.out:
        raise FacetlError("tune needs --out DIR for its study, trials and best.yaml")
    launcher = launcher_from_flags(args, Path(config.out), implied_local=(args.parallel or 1) > 1)
    best = tune(config, args.space, config.out, args.trials, launcher, args.parallel or 1, args.storage,
                args.startup_trials, progress=sys.stderr.isatty(), pictures=training_pictures)
    print((Path(config.out) / "trials.md").read_text(), end="")
    if best is None:
        raise FacetlError("no trial finished unpruned yet; rerun to go on, or raise --trials")
    print(f"best: {best['run']} (val loss {best['val_loss']:.4f}); its config: {Path(config.out) / 'best.yaml'}")
    return 0


COMMANDS = {"sweep": cmd_sweep, "runs": cmd_runs, "tune": cmd_tune}

if __name__ == "__main__":
    sys.exit(main())
