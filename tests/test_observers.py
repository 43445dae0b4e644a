"""Observers of a run (facetl.train.observers): what trackers and searches hear, and a stop one asks for."""
from __future__ import annotations

import csv
import json

from facetl.record import RunRecord
from test_fit import needs_smiles, small
from facetl.train.fit import fit


class Listener:
    """Remembers what it heard; asks to stop after `stop_after` epochs (as a pruner would)."""

    def __init__(self, stop_after: int | None = None):
        self.heard, self.stop_after = [], stop_after

    def run_started(self, config, record, folder, resumed_after):
        self.heard.append(("started", config.epochs, resumed_after))

    def epoch_ended(self, row, best):
        self.heard.append(("epoch", row["epoch"], round(row["val_loss"], 6)))
        return "pruned by the test's search" if row["epoch"] == self.stop_after else None

    def run_finished(self, folder, metrics):
        self.heard.append(("finished", sorted(metrics)[:1]))


@needs_smiles
def test_an_observer_hears_every_epoch_and_can_stop_the_run_which_says_why(tmp_path):
    heard_all, stopper = Listener(), Listener(stop_after=1)
    whole = fit(small(tmp_path, "whole", epochs=2), progress=False, quiet=True, observers=[heard_all])
    history = list(csv.DictReader((whole.folder / "history.csv").open()))
    assert [h for h in heard_all.heard if h[0] == "epoch"] == [
        ("epoch", int(r["epoch"]), round(float(r["val_loss"]), 6)) for r in history]
    assert heard_all.heard[0] == ("started", 2, 0) and heard_all.heard[-1][0] == "finished"

    stopped = fit(small(tmp_path, "stopped", epochs=3), progress=False, quiet=True, observers=[stopper])
    assert len(list(csv.DictReader((stopped.folder / "history.csv").open()))) == 1
    record = RunRecord.read(json.loads((stopped.folder / "run.json").read_text()), "run.json")
    assert (record.stopped_after, record.stopped_because) == (1, "pruned by the test's search")
    assert "pruned by the test's search" in (stopped.folder / "report.md").read_text()
    assert (stopped.folder / "metrics.json").is_file()  # a stopped run is still a whole run folder
