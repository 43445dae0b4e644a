"""Callbacks of a run (facetl.train.callbacks): what trackers, searches and pictures hear, in order, a stop one asks
for, a failing one left out, and close() whatever happens."""
from __future__ import annotations

import csv
import json

import pytest

from facetl.record import RunRecord
from facetl.train.callbacks import Callback, Callbacks
from test_fit import needs_smiles, small
from facetl.train.fit import fit


class Listener(Callback):
    """Remembers every hook it heard, in order; asks to stop after `stop_after` epochs (as a pruner would)."""

    def __init__(self, stop_after: int | None = None):
        self.heard, self.stop_after = [], stop_after

    def on_check(self, where, reads=(), own_run=None):
        self.heard.append(("check", where.out))

    def on_fit_start(self, run):
        self.heard.append(("start", run.config.epochs, run.resumed_after, run.folder.name))

    def on_epoch_end(self, row, best):
        self.heard.append(("epoch", row["epoch"], round(row["val_loss"], 6)))
        return "pruned by the test's search" if row["epoch"] == self.stop_after else None

    def on_final_split(self, final):
        self.heard.append(("final split", final.split.split, len(final.history)))

    def on_fit_end(self, metrics):
        self.heard.append(("end", "accuracy" in metrics))

    def close(self):
        self.heard.append(("close",))


class Interrupt(Callback):
    """Ctrl-C in the middle of epoch 2's checkpoint: the run fails (a KeyboardInterrupt is never guarded)."""

    def on_epoch_end(self, row, best):
        if row["epoch"] == 2:
            raise KeyboardInterrupt


class Broken(Callback):
    """A callback with a bug: the guard says it once, closes it and the run goes on without it."""

    def __init__(self):
        self.calls, self.closed = 0, 0

    def on_epoch_end(self, row, best):
        self.calls += 1
        raise ValueError("a bug in the callback\nsecond line")

    def close(self):
        self.closed += 1


@needs_smiles
def test_a_callback_hears_every_hook_in_order_and_can_stop_the_run_which_says_why(tmp_path):
    heard_all, stopper = Listener(), Listener(stop_after=1)
    whole = fit(small(tmp_path, "whole", epochs=2), progress=False, quiet=True, callbacks=[heard_all])
    history = list(csv.DictReader((whole.folder / "history.csv").open()))
    epochs = [("epoch", int(r["epoch"]), round(float(r["val_loss"]), 6)) for r in history]
    assert heard_all.heard == [("check", str(tmp_path / "whole")), ("start", 2, 0, "whole"), *epochs,
                               ("final split", "test", 2), ("end", True), ("close",)]

    stopped = fit(small(tmp_path, "stopped", epochs=3), progress=False, quiet=True, callbacks=[stopper])
    assert len(list(csv.DictReader((stopped.folder / "history.csv").open()))) == 1
    record = RunRecord.read(json.loads((stopped.folder / "run.json").read_text()), "run.json")
    assert (record.stopped_after, record.stopped_because) == (1, "pruned by the test's search")
    assert "pruned by the test's search" in (stopped.folder / "report.md").read_text()
    assert (stopped.folder / "metrics.json").is_file()  # a stopped run is still a whole run folder
    assert stopper.heard[-1] == ("close",)


@needs_smiles
def test_a_run_that_fails_still_closes_every_callback_and_a_broken_one_is_left_out(tmp_path):
    listener, broken = Listener(), Broken()
    with pytest.raises(KeyboardInterrupt):
        fit(small(tmp_path, "run", epochs=3), progress=False, quiet=True, callbacks=[broken, listener, Interrupt()])
    assert [h[0] for h in listener.heard] == ["check", "start", "epoch", "epoch", "close"]
    assert (broken.calls, broken.closed) == (1, 1)  # left out after its first failure, closed once
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("warning: Broken stopped (ValueError: a bug in the callback); the run goes on") == 1
    assert (tmp_path / "run" / "last.pt").is_file()  # what the finished epochs wrote stays


def test_callbacks_without_some_hooks_and_stop_reasons():
    """Any object with some of the hooks is a callback; the first reason to stop wins, every callback hears it."""
    class OnlyEpochs:
        def __init__(self, reason):
            self.reason, self.rows = reason, []

        def on_epoch_end(self, row, best):
            self.rows.append(row["epoch"])
            return self.reason

    lines = []
    first, second, third = OnlyEpochs(None), OnlyEpochs("first reason"), OnlyEpochs("second reason")
    callbacks = Callbacks([first, second, third], lines.append)
    callbacks.fit_start(None)
    assert callbacks.epoch_end({"epoch": 1}, {}) == "first reason"
    callbacks.fit_end({})
    callbacks.close()
    assert (first.rows, second.rows, third.rows, lines) == ([1], [1], [1], [])


class Steps(Callback):
    """Hears the stages of steps, as a progress bar would: each stage's name, its size and how far it got."""

    def __init__(self):
        self.stages = []

    def on_progress_start(self, stage, total, unit):
        self.stages.append([stage, total, unit, 0])

    def on_progress(self, done):
        self.stages[-1][3] = done


@needs_smiles
def test_progress_is_a_callback_that_hears_every_batch_of_training_and_validation_and_replaces_the_bars(
        tmp_path, capsys, monkeypatch):
    steps = Steps()
    fit(small(tmp_path, "steps", epochs=2), progress=True, callbacks=[steps])
    # 160 images in batches of 16: 128 train (8 batches), 16 val and 16 test (1 each)
    assert steps.stages == [["epoch 1/2", 8, "batch", 8],
                            ["validate", 1, "batch", 1], ["epoch 2/2", 8, "batch", 8], ["validate", 1, "batch", 1],
                            ["test", 1, "batch", 1]]
    assert "epoch 1/2:" not in capsys.readouterr().out  # a callback that hears the steps replaces the default bars

    import facetl.progress
    monkeypatch.setattr(facetl.progress, "LINE_SECONDS", 0.0)  # without a terminal: a line per step, as a long one
    fit(small(tmp_path, "bars", epochs=1), progress=True)
    out = capsys.readouterr().out
    assert "epoch 1/1: 4/8 (50%) batch" in out and "epoch   1/1  train loss" in out
    quiet = fit(small(tmp_path, "quiet", epochs=1), progress=False)
    assert "epoch 1/1:" not in capsys.readouterr().out and quiet.metrics["n_images"] == 16
