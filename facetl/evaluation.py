"""`facetl evaluate RUN`: the best checkpoint of a run on one of its splits, on this machine."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from facetl.config import group_spec_problems
from facetl.data.load import data_root, load_groups
from facetl.data.prepare import check_unchanged
from facetl.data.split import load_split
from facetl.data.store import cache_root, open_image_store
from facetl.errors import FacetlError
from facetl.evaluate.report import SplitResult, write_evaluation
from facetl.explain import gradcam_gallery
from facetl.run import LoadedRun, load_run, locate_data
from facetl.runtime import Runtime
from facetl.train.loop import Evaluator


def evaluate_run(folder: str | Path, split: str = "test", runtime: Runtime | None = None, progress: bool = True,
                 allow_changed_data: bool = False, data: str | None = None,
                 images: str | None = None, groups: str | None = None) -> tuple[dict, Path]:
    """Evaluate the best checkpoint on `split`; results go in RUN/eval-SPLIT/, beside the training-time ones.
    `groups` (a column or path:REGEX) adds metrics per group; by default, the run's own --groups."""
    run = load_run(folder)
    config, record = locate_data(run.config, run.folder, data, images), run.record
    group_by = groups or config.groups
    problems = group_spec_problems(group_by, "--groups") if group_by is not None else []
    if problems:
        raise FacetlError(problems[0])
    group_of = load_groups(config.data, config.images, config.target, group_by) if group_by else None
    runtime = runtime or Runtime.for_inference()
    samples, assignment = load_split(run.folder / "split.csv", data_root(config), run.class_names)
    check_unchanged(samples, run.folder / "split.csv", allow_changed_data)
    index = np.flatnonzero(assignment == split)
    if len(index) == 0:
        raise FacetlError(f"the {split} split of {run.folder} is empty")
    files = [samples.files()[i] for i in index]
    prep = record.preprocessing
    store = open_image_store(files, prep.size, cache_root(config.cache_dir) if config.cache else None,
                             config.workers, progress, prep.colour, prep.faces)
    if store.errors:
        first = next(iter(store.errors))
        raise FacetlError(f"{files[first]} is unreadable: {store.errors[first]}")
    labels = samples.labels[index]
    evaluator = Evaluator(run.model, record.cut, run.image_source(store.images, runtime), labels, runtime.precision,
                          config.batch_size * 2, temperature=record.temperature)
    result = evaluator(np.arange(len(index)), split, progress)
    out = run.folder / f"eval-{split}"
    names = [samples.paths[i] for i in index]
    write_gradcam_gallery(run, store.images, labels, result["probs"], names, out / "gradcam.png", runtime)
    split_groups = [group_of.get(n, "(none)") for n in names] if group_of is not None else None
    metrics = write_evaluation(out, SplitResult(split, labels, result["probs"], store.images, names, split_groups,
                                                group_by), record, run.history, config.to_dict())
    return metrics, out


def training_pictures(folder: Path, config, record, model, history: list[dict], split: SplitResult,
                      runtime: Runtime) -> None:
    """The Grad-CAM gallery of a run that just finished training (fit's `pictures`), beside its errors.png."""
    run = LoadedRun(folder, config, record, model, history)
    write_gradcam_gallery(run, split.images, split.labels, split.probs, split.names, folder / "gradcam.png", runtime)


def write_gradcam_gallery(run, images, labels: np.ndarray, probs: np.ndarray, names: list[str], path: Path,
                          runtime: Runtime) -> None:
    """gradcam.png beside errors.png, before report.md is written (the report mentions it when it exists).
    A picture is not worth a failed evaluation: anything going wrong is one warning, and no stale file stays."""
    path.unlink(missing_ok=True)
    try:
        gradcam_gallery(run, images, labels, probs, names, path, runtime)
    except Exception as exc:  # noqa: BLE001 - any failure of an extra picture
        path.unlink(missing_ok=True)
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        warnings.warn(f"{path} not written: the Grad-CAM gallery failed ({why}); the evaluation is complete")
