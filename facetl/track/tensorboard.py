"""TensorBoard: one run's event files in its folder (or --track-dir), read by `tensorboard --logdir runs/`.

Per epoch: train and validation loss and accuracy, and the LR, at step = epoch. At the end: the final
split's metrics (final/...), the report's plots as images and the precision-recall curve. The hyperparameters are
written into the same run's writer (torch's summary.hparams), not with SummaryWriter.add_hparams, which makes a
stray sub-run per call. A resumed run appends to the same folder; its steps go on from the last finished epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from facetl.history import TENSORBOARD_SCALARS
from facetl.track.base import Tracker
from facetl.track.places import (event_folder, hyperparameters, known_place, moved_from, read_tracking, remember,
                                 stored_place)

class TensorBoardTracker(Tracker):
    name, flag = "TensorBoard tracking", "tensorboard"
    needs = ("tensorboard", "torch.utils.tensorboard")
    own_settings = ("track_dir",)

    def __init__(self, settings, log=lambda line: None):
        super().__init__(settings, log)
        self.writer, self.step, self.split, self.folder = None, 0, None, None

    def places(self, where) -> list[tuple[str, str, Path]]:
        folder = event_folder(where)
        return [("--track-dir", where.track_dir, folder) if where.track_dir else
                ("TensorBoard's event folder", str(folder), folder)]

    def on_fit_start(self, run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder, resumed_after, where = run.folder, run.resumed_after, self.where(run)
        self.folder, self.split = folder, None
        known = read_tracking(folder).get("tensorboard") if resumed_after else None
        known_dir = known_place(folder, known["log_dir"], known) if known else None
        if known and known_dir is None:
            self.log(f"TensorBoard: {folder} was copied or moved from {moved_from(folder, known) or 'elsewhere'}; its "
                     f"events go on in {event_folder(where)}, and the original's ({known['log_dir']}) are left alone")
            known = None
        log_dir = known_dir or event_folder(where)
        log_dir.mkdir(parents=True, exist_ok=True)
        # a resumed run drops any event of an epoch it trains again
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resumed_after + 1 if resumed_after else None)
        self.step, self.record = resumed_after, run.record
        remember(folder, "tensorboard", {"log_dir": stored_place(folder, log_dir)})
        self.hparams = hyperparameters(run.config, run.record)
        if not known:  # a resumed run's hyperparameters are in its first event file
            self._write_hparams(start=True)
            self.writer.add_text("recipe", "\n".join(f"- {line}" for line in run.record.recipe) or "(none)")
        self.writer.flush()

    def _write_hparams(self, start: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        metric_tags = {tag: 0.0 for tag in ("val/loss", "val/acc", "final/accuracy", "final/roc_auc")}
        experiment, session_start, session_end = hparams(self.hparams, metric_tags)
        for summary in ((experiment, session_start) if start else (session_end,)):
            self.writer.file_writer.add_summary(summary)

    def on_epoch_end(self, row: dict, best: dict) -> None:
        self.step = row["epoch"]
        for tag, key in TENSORBOARD_SCALARS.items():
            self.writer.add_scalar(tag, row[key], self.step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def on_final_split(self, final) -> None:
        self.split = final.split

    def on_fit_end(self, metrics: dict) -> None:
        folder = self.folder
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"final/{key}", value, self.step)
        self.writer.add_text("final split", str(metrics.get("split", "")), self.step)
        for plot in sorted(folder.glob("*.png")):
            self.writer.add_image(f"plots/{plot.stem}", _pixels(plot), self.step, dataformats="HWC")
        if self.split is not None:
            for name, labels, scores in pr_curves(self.split.labels, self.split.probs, self.record.class_names):
                self.writer.add_pr_curve(f"pr_curve/{name}", labels, scores, self.step)
        self._write_hparams(start=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pr_curves(labels: np.ndarray, probs: np.ndarray, class_names: list[str]):
    """(name, is-positive, score) per curve: the positive class of two, each class of more (one against the rest),
    each attribute of a multi-attribute run (its observed labels only)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.ndim == 2:
        for k, name in enumerate(class_names):
            seen = np.isfinite(labels[:, k]) & (labels[:, k] >= 0)
            yield name, labels[seen, k] == 1, probs[seen, k]
        return
    shown = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for c in shown:
        yield class_names[c], labels == c, probs[:, c]
