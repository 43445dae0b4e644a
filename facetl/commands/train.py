"""`facetl train`: one model into a run folder (facetl/train/fit.py), K of them with --folds, N processes of one
with --nproc (this same command under torchrun), or a killed run continued with RUN --resume."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.flags import add_config_flags, config_from_args, oom_guard, whole_number

NAME = "train"
SUMMARY = "train one model into a run folder"
SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
EXAMPLES = [(f"facetl train --data {SMILES} --backbone mini_xception --weights fer2013 --strategy frozen "
             "--out runs/smile", "a smile detector from FER-2013's face-pretrained weights "
             "(facetl backbones --fetch fer2013)"),
            ("facetl train runs/smile --resume --epochs 20", "continue a killed run, or train a finished one further"),
            ("facetl train --config runs/smile/config.yaml --out runs/smile-again", "rerun a run exactly")]
INTERRUPTED = "finished epochs are kept (facetl train RUN --resume)"


def add_arguments(parser) -> None:
    groups = add_config_flags(parser)
    parser.usage = "%(prog)s --data PATH [options]\n       %(prog)s RUN --resume [--epochs N]"
    groups["output"].add_argument("run", nargs="?", metavar="RUN", help="with --resume: the run folder to continue")
    groups["output"].add_argument("--resume", nargs="?", const=True, metavar="RUN",
                                  help="continue RUN from its last finished epoch (facetl train RUN --resume; "
                                       "--epochs N trains a finished run further)")
    distributed = parser.add_argument_group("distributed")
    distributed.add_argument("--nproc", type=whole_number(1, 1024), default=1, metavar="N",
                             help="train with N processes on this machine (launches torchrun; one per GPU, or CPU "
                                  "gloo) (default 1)")


def run(args) -> int:
    from facetl.gradcam import TrainingPictures
    from facetl.track import callbacks_for, tracking_from
    from facetl.train.fit import fit

    resumed = resumed_run(args)
    args.resume = str(resumed) if resumed else None  # as tracking_from reads it
    if resumed:
        from facetl.train.resume import nothing_left, resume_config

        config = resume_config(resumed, getattr(args, "epochs", None))
        finished = nothing_left(resumed, config)
        if finished:
            print(finished)
            return 0
    else:
        config = config_from_args(args)
    tracking = tracking_from(args)
    if config.folds and not resumed:
        return train_folds(args, config, tracking)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args, config, resumed, callbacks_for(tracking))
    callbacks = [TrainingPictures(), *callbacks_for(tracking)]
    oom_guard(lambda: fit(config, resume=bool(resumed), progress=True, callbacks=callbacks), config.batch_size)
    return 0


def resumed_run(args) -> Path | None:
    """The run --resume continues: RUN --resume, or the older --resume RUN."""
    given = args.resume if isinstance(args.resume, str) else args.run
    if args.run and isinstance(args.resume, str):
        raise FacetlError(f"give one run to resume, not {args.run} and {args.resume}")
    if args.resume and not given:
        raise FacetlError("--resume needs the run folder: facetl train RUN --resume")
    if given and not args.resume:
        raise FacetlError(f"facetl train takes a run folder ({given}) only to continue it: "
                          f"facetl train {given} --resume")
    return Path(given) if given else None


def train_folds(args, config: TrainConfig, tracking) -> int:
    """`train --folds K`: cross-validation (facetl.experiments.folds.train_folds), in this process."""
    from facetl.gradcam import TrainingPictures
    from facetl.experiments.folds import train_folds as cross_validate
    from facetl.experiments.run import Launch
    from facetl.track import callbacks_for

    if args.nproc > 1:
        raise FacetlError("--folds trains its folds one after another in this process; drop --nproc")
    if not config.out:
        config = dataclasses.replace(config, out=default_out(config))
    callbacks = [TrainingPictures(), *callbacks_for(tracking.together(config.out))]  # folds: one MLflow parent
    results = oom_guard(lambda: cross_validate(config, Launch(callbacks=callbacks)), config.batch_size)
    print(results.read_text())
    return 0


def launch_torchrun(args, config: TrainConfig, resumed: Path | None, callbacks=()) -> int:
    """Check the input here (one clear line on bad input), then run this same command under torchrun."""
    from facetl.data.prepare import read_samples
    from facetl.data.spec import data_spec
    from facetl.models.factory import pretrained_input
    from facetl.train.fit import check_output_places

    config.check()
    check_output_places(config, config.out or default_out(config), "--out" if config.out else "the default --out",
                        callbacks=callbacks)
    read_samples(data_spec(config))
    pretrained_input(config.backbone)  # an unknown backbone is refused here, without building one
    if not config.out:
        config = dataclasses.replace(config, out=default_out(config))
    argv = without_option(args.argv, "--nproc") + ([] if resumed or "--out" in args.argv else ["--out", config.out])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
               "-m", "facetl", *argv]
    return subprocess.call(command)


def default_out(config: TrainConfig) -> str:
    from facetl.train.fit import default_out as runs_folder

    return runs_folder(config)


def without_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out
