"""A trial tracker (issue 31's note: adding a tracker is one file and one line): each epoch's row as a JSON line
in RUN/epochs.jsonl."""
from __future__ import annotations

import json

from facetl.track.base import Tracker


class JsonLinesTracker(Tracker):
    name, flag = "JSON-lines tracking", "jsonlines"

    def on_fit_start(self, run) -> None:
        self.path = run.folder / "epochs.jsonl"

    def on_epoch_end(self, row: dict, best: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
