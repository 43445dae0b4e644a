"""What every tracker shares: it is a callback of `fit` (it has the hooks of facetl.train.callbacks.Callback, a
layer above, which it does not import) made from the command's tracking settings, and before any work it checks that what it imports is installed and that each local place it writes
keeps the output rule (not an input, not inside the data, not inside another run) and can be written.

A tracker subclasses `Tracker` and says its `name`, the modules it `needs`, the `own_settings` keys that configure it
alone, and the local `places` it writes; then it is one line in facetl/track/registry.py."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

from facetl.errors import FacetlError
from facetl.outputs import refuse_misplaced, unwritable
from facetl.track.places import relocated

INSTALL = "pip install 'facetl[track]'"


class Tracker:
    name = "a tracker"        # as the log names it: "MLflow tracking"
    flag = ""                 # the word --track takes
    needs: tuple[str, ...] = ()   # the modules it imports
    own_settings: tuple[str, ...] = ()  # tracking settings that apply to this tracker alone

    def __init__(self, settings, log: Callable[[str], None] = lambda line: None):
        self.settings, self.log = settings, log

    def close(self) -> None:
        """The run is over, finished or failed."""

    def places(self, where) -> list[tuple[str, str, Path]]:
        """(flag, its value as given, the local place it writes) for the settings `where` (its `out` set)."""
        return []

    def check_settings(self, where) -> None:
        """What else a tracker refuses before any work (MLflow: a URI it cannot use)."""

    def on_check(self, where, reads: Sequence[Path] = (), own_run=None) -> None:
        """One line before any work: not installed, a local place misplaced or not writable."""
        if not importable(self.needs):
            raise FacetlError(f"--track {self.flag} needs {self.flag} installed: {INSTALL}")
        settings = self.settings.at(where.out)
        places = self.places(settings)
        for flag, given, place in places:
            refuse_misplaced(place, flag, reads, own_run, given)
        self.check_settings(settings)
        for flag, given, place in places:
            folder = place if place.is_dir() else place.parent
            problem = unwritable(folder)
            if problem:
                raise FacetlError(f"{flag} {given}: cannot write {folder} ({problem})")

    def where(self, run):
        """The settings for this run: its folder, and a copied or moved run's places taken inside itself. The
        tracker's lines go to the run's log (train.log) from now on."""
        self.log = run.log
        return relocated(self.settings.at(run.folder), run.folder)


def importable(modules: Sequence[str]) -> bool:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True
