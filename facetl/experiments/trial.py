"""A Trial: one run an experiment asks for, as (name, config, folder), and the job that trains it.

Sweeps (each point, each fold of each point) and cross-validation are lists of trials, and any launcher runs a
trial's job: in this process it is `fit`, elsewhere `python -m facetl train --config FOLDER/config.yaml --out
FOLDER` (or `--resume FOLDER` where a killed one left last.pt). Either way the trial is an ordinary run folder,
and a finished one (metrics.json) is not trained again.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from facetl.config import TrainConfig, dump_yaml, with_absolute_paths
from facetl.experiments.jobs import Job
from facetl.runfolder import atomic_write_text


@dataclass(frozen=True)
class Trial:
    name: str            # "lr-0.001", or "lr-0.001/fold-2" with --folds
    config: TrainConfig  # its config, out set to its folder
    folder: Path

    @property
    def finished(self) -> bool:
        return (self.folder / "metrics.json").is_file()

    def command(self, nproc: int = 1, tracking: dict | None = None) -> list[str]:
        """`facetl train` for the trial, as a fresh process: resumed where a killed run left last.pt. Its
        config.yaml carries the experiment's tracking settings (`tracking`) beside the run's config."""
        command = [sys.executable, "-m", "facetl", "train"]
        if (self.folder / "last.pt").is_file():
            command += ["--resume", str(self.folder)]
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / "config.yaml", dump_yaml(with_absolute_paths(self.config), tracking))
            command += ["--config", str(self.folder / "config.yaml"), "--out", str(self.folder)]
        return command + (["--nproc", str(nproc)] if nproc > 1 else [])

    def train_here(self, progress: bool = True, callbacks: Sequence = ()) -> None:
        """Train it in this process, resuming where a killed run left last.pt."""
        from facetl.train.fit import fit

        fit(self.config, resume=(self.folder / "last.pt").is_file(), progress=progress, callbacks=callbacks)

    def job(self, launch) -> Job:
        """The job any launcher runs, as `launch` (facetl.experiments.run.Launch) asks: its command, and the same
        work as a call for the in-process launcher."""
        return Job(self.name, self.command(launch.nproc, launch.tracking), self.folder, launch.nproc,
                   here=lambda: self.train_here(launch.progress, launch.callbacks))
