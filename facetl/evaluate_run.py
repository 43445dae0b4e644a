"""A run's best checkpoint on one of its splits, on this machine: the metrics, the report and its plots, the
Grad-CAM gallery and one row per image, in RUN/eval-SPLIT/ (what `facetl evaluate` and `facetl.evaluate()` do)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetl.config import group_spec_problems
from facetl.data.load import data_root, load_groups
from facetl.data.prepare import check_unchanged
from facetl.data.spec import data_spec
from facetl.data.split import load_split
from facetl.data.store import RowCut, cache_root, open_image_store
from facetl.errors import FacetlError
from facetl.evaluate.report import SplitResult, write_evaluation
from facetl.gradcam import write_gradcam_gallery
from facetl.inference.decision import Decision
from facetl.inference.run import LoadedRun, load_run
from facetl.inference.tta import with_tta
from facetl.outputs import unwritable
from facetl.progress import progress_bar
from facetl.runfolder import atomic_write_csv
from facetl.runreader import locate_data
from facetl.runtime import Runtime


@dataclass(frozen=True)
class DataLocation:
    """Where a run's data is now, when it moved since training, and whether its files may have changed since
    the split was made."""
    data: str | None = None       # --data: the data folder or table, as it is here
    images: str | None = None     # --images: a table's image folder
    allow_changed: bool = False   # --allow-changed-data


def evaluate_run(folder: str | Path, split: str = "test", runtime: Runtime | None = None, progress: bool = True,
                 located: DataLocation = DataLocation(), tta: str = "none",
                 groups: str | None = None) -> tuple[dict, Path]:
    """Evaluate the best checkpoint on `split`; results go in RUN/eval-SPLIT/, beside the training-time ones.
    `tta` flip: each image's probabilities are averaged with its mirror image's (facetl.inference.run.with_tta).
    `groups` (a column or path:REGEX) adds metrics per group; by default, the run's own --groups."""
    run = load_run(folder)
    out = run.folder / f"eval-{split}"
    problem = unwritable(out)  # said now, not after minutes of work (a run copied read-only, a shared folder)
    if problem:
        raise FacetlError(f"cannot write the evaluation into {out}: {problem}; copy the run somewhere writable "
                          "and evaluate the copy")
    config, record = locate_data(run.config, run.folder, located.data, located.images), run.record
    group_by = groups or config.groups
    problems = group_spec_problems(group_by, "--groups") if group_by is not None else []
    if problems:
        raise FacetlError(problems[0])
    group_of = load_groups(config.data, config.images, config.target, group_by) if group_by else None
    runtime = runtime or Runtime.for_inference()
    samples, assignment = load_split(run.folder / "split.csv", data_root(data_spec(config)), run.class_names,
                                    record.multi_attribute)
    check_unchanged(samples, run.folder / "split.csv", located.allow_changed)
    index = np.flatnonzero(assignment == split)
    if len(index) == 0:
        raise FacetlError(f"the {split} split of {run.folder} is empty")
    every_file = samples.files()  # once: building it per index was quadratic (minutes on all of SMILEsmileD)
    files = [every_file[i] for i in index]
    prep = record.preprocessing
    store = open_image_store(files, prep.size, cache_root(config.cache_dir) if config.cache else None,
                             config.workers, progress, RowCut.of(prep))
    if store.errors:
        first = next(iter(store.errors))
        raise FacetlError(f"{files[first]} is unreadable: {store.errors[first]}")
    labels = samples.labels[index]
    probs = split_probabilities(run, store.images, runtime, tta, config.batch_size * 2, split, progress)
    names = [samples.paths[i] for i in index]
    split_groups = [group_of.get(n, "(none)") for n in names] if group_of is not None else None
    result = SplitResult(split, labels, probs, store.images, names, split_groups, group_by)
    if not record.multi_attribute:  # the gallery shows one decision per image
        write_gradcam_gallery(run, result, out / "gradcam.png", runtime)
    metrics = write_evaluation(out, result, record, run.history, config.to_dict(), tta)
    write_predictions(out / "predictions.csv", names, labels, probs, run)
    return metrics, out


def split_probabilities(run: LoadedRun, images: np.ndarray, runtime: Runtime, tta: str, batch_size: int,
                        desc: str = "eval", progress: bool = True) -> np.ndarray:
    """(images, classes) probabilities of the run's model, batch by batch, as predict computes them."""
    batches = [with_tta(lambda x: run.classify(x, runtime), np.asarray(images[start:start + batch_size]), tta)
               for start in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch",
                                         enabled=progress, summary=False)]
    return np.concatenate(batches) if batches else np.zeros((0, len(run.class_names)), dtype=np.float32)


def write_predictions(path: Path, names: list[str], labels: np.ndarray, probs: np.ndarray, run: LoadedRun) -> None:
    """Every image's true label, the run's decision and each class's probability, as predict's CSV has them."""
    classes = run.class_names
    if run.record.multi_attribute:
        return write_attribute_predictions(path, names, labels, probs, run)
    decided = Decision.of(run.record).decide(probs)
    atomic_write_csv(path, ["path", "true_label", "label"] + [f"p_{name}" for name in classes],
                     [[name, classes[y], classes[k], *(f"{q:.6f}" for q in p)]
                      for name, y, k, p in zip(names, labels, decided, probs)])


def write_attribute_predictions(path: Path, names: list[str], labels: np.ndarray, probs: np.ndarray,
                                run: LoadedRun) -> None:
    """Multi-attribute: per attribute the true value (empty where missing), the run's 0/1 and its probability."""
    decided = Decision.of(run.record).decide(probs)
    header = ["path"] + [f"{kind}{a}" for a in run.class_names for kind in ("true_", "", "p_")]
    rows = [[name, *(cell for y, d, q in zip(true, said, p) for cell in ("" if y < 0 else int(y), int(d), f"{q:.6f}"))]
            for name, true, said, p in zip(names, labels, decided, probs)]
    atomic_write_csv(path, header, rows)
