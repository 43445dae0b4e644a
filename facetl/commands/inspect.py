"""`facetl inspect`: what is in a dataset before training on it.

Counts per class, a class-balance chart, a labelled grid of random images, files that cannot be
read, and exact duplicate files, above all those filed under different labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facetl.data.samples import Samples
from facetl.data.split import duplicate_groups
from facetl.data.store import open_image_store
from facetl.evaluate.plots import image_grid, plot_class_balance
from facetl.errors import FacetlError
from facetl.runfolder import atomic_write_csv, atomic_write_json, prepare_run_folder
from facetl.flags import add_cache_dir, add_data, add_out
from facetl.outputs import data_reads, refuse_misplaced


NAME = "inspect"
SUMMARY = "class balance, sample grid, unreadable and duplicate files"
EXAMPLES = [("facetl inspect --data ../shared/datasets/SMILEsmileD/SMILEs --out inspect/smiles",
             "class balance, samples, duplicates"),
            ("facetl inspect --data ../shared/datasets/celebrity_faces_attributes.csv --images "
             "../shared/datasets/celebrity_faces --target Male --out inspect/gender", "an attribute table")]


def add_arguments(parser) -> None:
    add_data(parser, required=True)
    add_out(parser, "folder for the charts and lists", required=True)
    add_cache_dir(parser)


def run(args) -> int:
    from facetl.data.load import load_samples
    from facetl.data.store import cache_root

    if args.target and ("," in args.target or args.target.strip() == "all"):
        raise FacetlError(f"facetl inspect takes one --target column, not {args.target}; take the attributes one at "
                          "a time")
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

PREVIEW_SIZE = 96


def inspect_dataset(samples: Samples, out: str | Path, cache_dir: Path | None, seed: int = 0,
                    progress: bool = True) -> dict:
    if samples.multi_attribute:  # before the folder is made: nothing is left behind
        raise FacetlError("facetl inspect takes one --target column; inspect the attributes one at a time")
    out = prepare_run_folder(out)
    store = open_image_store(samples.files(), PREVIEW_SIZE, cache_dir, progress=progress)
    counts = samples.counts()
    plot_class_balance(counts, out / "class_balance.png")

    readable = np.flatnonzero(store.readable())
    rng = np.random.default_rng(seed)
    shown = rng.choice(readable, size=min(32, len(readable)), replace=False) if len(readable) else []
    image_grid([store.images[i] for i in shown], [samples.class_names[samples.labels[i]][:18] for i in shown],
               out / "samples.png", title="random images with their labels")

    unreadable = [(samples.paths[i], why) for i, why in sorted(store.errors.items())]
    atomic_write_csv(out / "unreadable.csv", ["path", "reason"], unreadable)

    groups = duplicate_groups(samples, store.hashes)
    rows, conflicts = [], 0
    for number, group in enumerate(groups, start=1):
        labels = {samples.class_names[samples.labels[i]] for i in group}
        conflict = len(labels) > 1
        conflicts += conflict
        rows += [(number, samples.paths[i], samples.class_names[samples.labels[i]], conflict) for i in group]
    atomic_write_csv(out / "duplicates.csv", ["group", "path", "label", "conflicting_labels"], rows)

    summary = {
        "images": len(samples), "classes": counts, "unreadable": len(unreadable),
        "duplicate_groups": len(groups), "duplicate_files": sum(len(g) for g in groups),
        "conflicting_duplicate_groups": conflicts,
        "conflicting_examples": [[samples.paths[i] for i in g] for g in groups
                                 if len({samples.labels[i] for i in g}) > 1][:10],
        "root": str(samples.root),
    }
    atomic_write_json(out / "inspect.json", summary)
    return summary
