"""`facetl sweep`: every combination of a grid, on one split, with a results table (facetl.experiments.sweep),
through any launcher; `--status DIR` shows a sweep's jobs and rebuilds its tables."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from facetl.errors import FacetlError
from facetl.experiments.grid import parse_grid
from facetl.experiments.launchers import add_launcher_flags, launcher_from_flags
from facetl.experiments.run import Launch
from facetl.experiments.sweep import sweep, sweep_status
from facetl.flags import add_config_flags, config_from_args, whole_number
from facetl.track import callbacks_for, tracking_from

NAME = "sweep"
SUMMARY = "every combination of a grid, on one split, with a results table"
SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
EXAMPLES = [(f"facetl sweep --config configs/study4_smile_mobilenetv2.yaml --data {SMILES} "
             "--grid strategy=frozen,last-block --out runs/study4", "study 4: two strategies, one split"),
            (f"facetl sweep --data {SMILES} --weights auto --grid lr=1e-3,1e-4 --folds 5 --out runs/smile-lr",
             "two learning rates, each cross-validated over 5 folds")]
INTERRUPTED = "finished runs are kept; the same command goes on from there"


def add_arguments(parser) -> None:
    groups = add_config_flags(parser)
    groups["data"].add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                                help="a configuration key and its values; repeat for more keys")
    jobs = add_launcher_flags(parser, "jobs (how the points run)", "how each point runs",
                              "points at once (without --launcher: local processes; slurm: the array's parallelism) "
                              "(default 1 locally, as many as SLURM allows on a cluster)")
    jobs.add_argument("--nproc", type=whole_number(1, 1024), default=1, metavar="N",
                      help="train each point with N processes (torchrun inside its job; implies --launcher local)")
    jobs.add_argument("--status", metavar="DIR", help="show the jobs of the sweep in DIR and rebuild its results "
                                                      "table, then exit")
    jobs.add_argument("--detach", action="store_true",
                      help="return once the jobs are submitted, where they outlive this command (slurm); follow "
                           "them with --status")


def run(args) -> int:
    from facetl.gradcam import TrainingPictures  # the Grad-CAM gallery (a callback)

    if args.status:
        return show_status(Path(args.status))
    config = config_from_args(args)
    if not config.out:
        raise FacetlError("sweep needs --out DIR for its runs and results table")
    tracking = tracking_from(args).together(config.out)  # --track: the points are one MLflow parent run's children
    trackers = callbacks_for(tracking)
    from facetl.train.fit import check_output_places

    check_output_places(config, config.out, run=False, callbacks=trackers)  # the trackers' places, before any work
    grid = parse_grid(args.grid)
    launcher = launcher_from_flags(args, Path(config.out))
    sweep(config, grid, config.out, Launch(launcher, args.nproc, args.detach, callbacks=[
        TrainingPictures(), *trackers], tracking=tracking.values()))
    if not args.detach:
        print((Path(config.out) / "results.md").read_text())
    return 0


def show_status(out: Path) -> int:
    rows = [["point", "state", "job", "detail", "log"]] + [[s.name, s.state, s.job_id, s.detail, s.log]
                                                           for s in sweep_status(out)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:  # the log last, unpadded: it is the long one
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    counts = Counter(row[1] for row in rows[1:])
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(rows) - 1} points")
    if (out / "results.md").is_file():
        print(f"results (rebuilt): {out / 'results.md'}")
    return 0
