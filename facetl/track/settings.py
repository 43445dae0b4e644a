"""What the trackers need that is not part of a run's recipe: which trackers (--track), where TensorBoard writes
(--track-dir), MLflow's store (--tracking-uri) and the sweep's or folds' folder whose runs nest under one parent
(--track-group, set by sweep and --folds). They are the command's settings, not the run's config: the same
run trained again, tracked or not, is the same run.

A run's config.yaml from before this split holds these keys: `build_config` sets them aside and
`tracking_settings` reads them, so old run folders still load and still track when resumed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from facetl.config import TRACKING_KEYS, load_yaml
from facetl.errors import FacetlError
from facetl.track.places import read_tracking

HELP = {
    "track": "log the run to tensorboard and/or mlflow (comma separated; needs pip install 'facetl[track]')",
    "track_dir": "TensorBoard: write event files to DIR/RUN instead of the run folder",
    "tracking_uri": "MLflow tracking URI, e.g. sqlite:///mlflow.db (relative to the current folder) or "
                    "http://host:5000 (None: sqlite:///mlflow.db inside the sweep's or folds' folder, or inside the "
                    "run folder)",
    "track_group": "the folder whose runs are one MLflow parent run's children (sweep and --folds set it)",
}


@dataclass(frozen=True)
class TrackingSettings:
    track: tuple[str, ...] = ()         # tensorboard, mlflow (facetl/track/registry.py)
    track_dir: str | None = None        # TensorBoard event folder; None: the run folder
    tracking_uri: str | None = None     # MLflow; None: sqlite:///mlflow.db inside the sweep's folder or the run's
    track_group: str | None = None      # the sweep's or folds' folder: its runs are children of one MLflow run
    out: str | None = None              # the run folder (or a set's, when checked), given per run by `at`

    def __post_init__(self):
        problems = tracking_problems(self)
        if problems:
            raise FacetlError("invalid configuration: " + "; ".join(problems))

    @property
    def trackers(self) -> list[str]:
        """What --track asks for (`none` is none), each once."""
        return list(dict.fromkeys(t for t in self.track if t != "none"))

    def at(self, out: str | Path) -> TrackingSettings:
        """These settings for the run (or set of runs) in `out`."""
        return dataclasses.replace(self, out=str(out))

    def together(self, folder: str | Path) -> TrackingSettings:
        """A sweep's or folds' runs, tracked: each one carries the set's folder, so MLflow nests them under one
        parent run wherever they run (one process, parallel, SLURM)."""
        if not self.trackers or self.track_group:
            return self
        return dataclasses.replace(self, track_group=str(Path(folder).expanduser().resolve()))

    def values(self) -> dict:
        """As config.yaml and the command line name them (what `tracking_settings` reads back)."""
        return {key: list(self.track) if key == "track" else getattr(self, key) for key in TRACKING_KEYS
                if getattr(self, key)}


def tracking_settings(values: dict) -> TrackingSettings:
    """The tracking keys of a config.yaml's or the command line's values (others are ignored)."""
    given = {key.replace("-", "_"): value for key, value in values.items()}
    track = given.get("track") or ()
    if isinstance(track, str):
        track = track.split(",")
    if not isinstance(track, (list, tuple)):
        raise FacetlError(f"invalid configuration: track: expected a list, got {track!r}")
    track = tuple(name.strip() for item in track for name in str(item).split(",") if name.strip())
    texts = {}
    for key in TRACKING_KEYS[1:]:
        value = given.get(key)
        if value is not None and not isinstance(value, str):
            raise FacetlError(f"invalid configuration: {key}: expected text, got {value!r}")
        texts[key] = value.strip() if value else None
    return TrackingSettings(track, **texts)


def tracking_problems(settings: TrackingSettings) -> list[str]:
    """--track names registered trackers; a tracker's own settings (--track-dir, --tracking-uri) apply with it."""
    from facetl.track.registry import TRACKERS

    problems = [f"track: {name!r} is not one of {', '.join(TRACKERS)}" for name in settings.track
                if name not in (*TRACKERS, "none")]
    for name, tracker in TRACKERS.items():
        for key in tracker.own_settings:
            if getattr(settings, key) and name not in settings.trackers:
                problems.append(f"{key}: applies with --track {name}")
    return problems


def resumed_tracking(run: Path, given: TrackingSettings | None = None) -> TrackingSettings:
    """What a resumed run is tracked with: the settings its config.yaml holds (a run from before they left it),
    every tracker its tracking.json names (each finds its own places there), and any --track given now."""
    from facetl.track.registry import TRACKERS

    values = load_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    old = tracking_settings(values)
    named = [name for name in read_tracking(run) if name in TRACKERS]
    given = given or TrackingSettings()
    track = tuple(dict.fromkeys([*old.trackers, *named, *given.trackers]))
    return dataclasses.replace(old, track=track, **{key: getattr(given, key) for key in TRACKING_KEYS[1:]
                                                    if getattr(given, key)})
