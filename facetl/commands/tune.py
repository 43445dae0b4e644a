"""`facetl tune`: a search of the configuration (Optuna TPE, median pruning) on one split, its workers started
through any launcher (facetl.experiments.tune); `--worker DIR` is one worker, what the launchers start."""
from __future__ import annotations

import sys
from pathlib import Path

from facetl.errors import FacetlError
from facetl.evaluate.metrics import best_words, metric
from facetl.experiments.launchers import add_launcher_flags, launcher_from_flags
from facetl.experiments.run import Launch
from facetl.experiments.tune import Search, run_worker, tune, worker_index
from facetl.flags import add_config_flags, config_from_args, whole_number

NAME = "tune"
SUMMARY = ("a search of the configuration (Optuna TPE, median pruning on the selection metric) on one split; every "
           "trial a run folder, the best one's config written")
SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
EXAMPLES = [(f"facetl tune --data {SMILES} --weights auto --epochs 5 --space lr=log:1e-5:1e-2 "
             "--space strategy=frozen,last-block,gradual --trials 30 --out runs/smile-tune",
             "30 trials of a TPE search; bad ones pruned; runs/smile-tune/best.yaml"),
            ("facetl train --config runs/smile-tune/best.yaml --out runs/smile-best",
             "rerun the best trial's configuration"),
            (f"facetl tune --config configs/study4_smile_mobilenetv2.yaml --data {SMILES} "
             "--space lr=log:1e-5:1e-2 --trials 16 --parallel 2 --out runs/study4-tune",
             "two worker processes sharing one study"),
            (f"facetl tune --config configs/study4_smile_mobilenetv2.yaml --data {SMILES} "
             "--space lr=log:1e-5:1e-2 --trials 32 --out runs/study4-tune --launcher slurm --parallel 4 "
             "--partition gpu --gpus-per-run 1 --cpus-per-run 8 --time 240 --sbatch account=myproj",
             "four workers as one SLURM job array")]
INTERRUPTED = "finished trials are kept in the study; the same command goes on from there"


def add_arguments(parser) -> None:
    # a trial is one run on one split; its trials are not tracked
    add_config_flags(parser, exclude=("folds", "track", "track_dir", "tracking_uri", "track_group"))
    search = parser.add_argument_group("search")
    search.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                        help="a key and where to search it: log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or A,B,C; "
                             "repeat for more keys")
    search.add_argument("--trials", type=whole_number(1, 100_000), default=20, metavar="N",
                        help="trials the study should have, counting earlier ones (default 20)")
    search.add_argument("--storage", metavar="URL", help="Optuna RDB storage, e.g. postgresql://... for workers "
                                                         "on several machines (default sqlite:///OUT/study.db)")
    search.add_argument("--startup-trials", type=whole_number(0, 100_000), default=5, metavar="N",
                        help="trials that finish before the median pruner stops any (default 5)")
    workers = add_launcher_flags(parser, "workers (how the trials run)", "how the workers sharing the study run",
                                 "workers sharing the study (without --launcher, more than 1: local processes at "
                                 "once on this machine; slurm: the job array's tasks) (default 1)")
    workers.add_argument("--worker", metavar="DIR", help="run as one worker of the study in DIR until it has its "
                                                         "trials: what --parallel and cluster launchers start")
    workers.add_argument("--worker-index", type=whole_number(0, 1_000_000), metavar="K",
                         help="this worker's number, recorded with its trials (default $SLURM_ARRAY_TASK_ID, or 0)")


def run(args) -> int:
    from facetl.gradcam import TrainingPictures  # the Grad-CAM gallery (a callback)

    if args.worker:
        run_worker(args.worker, worker_index(args.worker_index), callbacks=[TrainingPictures()])
        return 0
    config = config_from_args(args)
    if not config.out:
        raise FacetlError("tune needs --out DIR for its study, trials and best.yaml")
    launcher = launcher_from_flags(args, Path(config.out))
    best = tune(config, Search(args.space, args.trials, args.storage, args.startup_trials), config.out,
                Launch(launcher, progress=sys.stderr.isatty(), callbacks=[TrainingPictures()]), args.parallel or 1)
    print((Path(config.out) / "trials.md").read_text(), end="")
    if best is None:
        raise FacetlError("no trial finished unpruned yet; rerun to go on, or raise --trials")
    print(f"best: {best['run']} ({metric(best['metric']).label} {best['value']:.4f}, "
          f"{best_words(best['metric'])}); its config: {Path(config.out) / 'best.yaml'}")
    return 0
