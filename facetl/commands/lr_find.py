"""`facetl lr-find`: the learning-rate range test for a set of training options (facetl/train/lrfind.py), as a
plot of loss against LR and the LR it suggests."""
from __future__ import annotations

import dataclasses
import sys
from datetime import datetime

from facetl.flags import add_config_flags, config_from_args

NAME = "lr-find"
SUMMARY = "the learning-rate range test: a plot of loss against LR and the suggested LR for these training options"
SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
EXAMPLES = [(f"facetl lr-find --data {SMILES} --weights none --strategy full --img-size 64 --out runs/lr-find",
             "lr_find.png and the suggested LR for training from scratch"),
            (f"facetl train --data {SMILES} --weights none --strategy full --img-size 64 --lr auto --out runs/auto",
             "the same test, then training with its LR")]
# what only a whole training uses: the test stops after its batches
UNUSED = ("folds", "patience", "ema", "select", "threshold", "calibrate", "groups", "track", "track_dir",
          "tracking_uri", "track_group")


def add_arguments(parser) -> None:
    add_config_flags(parser, exclude=UNUSED)


def run(args) -> int:
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
