"""What `facetl train --resume RUN [--epochs N]` continues: the run's own resolved config, its data found
where it is now, and whether anything is left to train."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from facetl.config import TrainConfig, build_config, load_yaml
from facetl.errors import FacetlError
from facetl.runreader import epochs_recorded, locate_data


def resume_config(run: Path, epochs: int | None = None) -> TrainConfig:
    """The config RUN trained with (config.yaml), writing into RUN; `epochs` extends a finished or running run."""
    if not (run / "config.yaml").is_file():
        raise FacetlError(f"nothing to resume: {run} has no config.yaml")
    values = load_yaml(run / "config.yaml")
    values.setdefault("landmarks", "detector")  # a run from before the setting aligned with the detector's
    config = dataclasses.replace(locate_data(build_config(values), run), out=str(run))
    return config if epochs is None else build_config({"epochs": epochs}, config)


def nothing_left(run: Path, config: TrainConfig) -> str | None:
    """Why there is nothing to resume (a finished run with no more epochs asked for), or None."""
    done = epochs_recorded(run)
    if (run / "metrics.json").is_file() and done >= config.epochs:
        return (f"{run} is finished ({done} of {config.epochs} epochs); nothing to resume. To train it further, "
                f"pass --epochs N with N > {done}")
    return None
