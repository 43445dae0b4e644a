"""Issue 22, part 3: one metric table. A metric added to facetl.evaluate.metrics.METRICS, and nowhere else,
is computed into metrics.json and shown by everything that shows metrics: report.md, the sweep's and the
folds' results.md and results.csv, serve's model card, the line at the end of training and evaluate's line.

The runs are trained once for the module, through the real commands, with a trial metric (Matthews
correlation) patched into the table; tiny random images, one epoch.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commandline import in_process
from facetl.cli import main
from facetl.evaluate import metrics as metric_table

TRIAL_KEY, TRIAL_LABEL = "mcc", "MCC"

# what metrics.json records beside the metrics: facts about the run and the split, not scores of the predictions
RUN_FACTS = {"threshold", "threshold_rule", "base_rate", "confusion_matrix", "n_images", "split", "tta", "class_names",
             "train_seconds", "trainable_params", "best_epoch", "pretraining", "pretrained", "roc_auc_per_class",
             "ece_bins", "temperature", "calibration", "groups"}


def with_trial_metric(patch) -> None:
    """One entry added to the table: the only change a new metric needs."""
    from sklearn.metrics import matthews_corrcoef

    trial = metric_table.Metric(TRIAL_KEY, TRIAL_LABEL,
                                lambda labels, predicted, probs: float(matthews_corrcoef(labels, predicted)))
    patch.setattr(metric_table, "METRICS", (*metric_table.METRICS, trial))


def write_images(folder: Path, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("metric-table")
    data = root / "faces"
    write_images(data / "no_smile", [f"{i:02d}.jpg" for i in range(12)], 0)
    write_images(data / "smile", [f"{i:02d}.jpg" for i in range(12)], 1)
    common = ["--data", str(data), "--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1",
              "--cache-dir", str(root / "cache")]
    with pytest.MonkeyPatch.context() as patch:
        with_trial_metric(patch)
        assert main(["sweep", *common, "--grid", "lr=1e-3", "--out", str(root / "sweep")]) == 0
        assert main(["train", *common, "--folds", "2", "--out", str(root / "folds")]) == 0
    return {"data": data, "sweep": root / "sweep", "run": root / "sweep" / "lr-1e-3", "folds": root / "folds"}


def header(markdown: str, first: str) -> list[str]:
    """The header cells of the markdown table whose first column is `first`."""
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_metric_added_to_the_table_is_in_metrics_json_the_report_and_the_fit_log(runs):
    metrics = json.loads((runs["run"] / "metrics.json").read_text())
    assert isinstance(metrics[TRIAL_KEY], float) and -1 <= metrics[TRIAL_KEY] <= 1
    report = (runs["run"] / "report.md").read_text()
    assert header(report, "accuracy")[-1] == TRIAL_LABEL
    assert f"| {metrics[TRIAL_KEY]:.4f} |" in report
    final = [line for line in (runs["run"] / "train.log").read_text().splitlines() if " test: accuracy " in line]
    assert len(final) == 1 and f"{TRIAL_LABEL} {metrics[TRIAL_KEY]:.4f}" in final[0]


def test_a_metric_added_to_the_table_is_a_column_of_the_sweep_and_the_folds(runs):
    with open(runs["sweep"] / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((runs["run"] / "metrics.json").read_text())
    assert float(rows[0][TRIAL_KEY]) == pytest.approx(metrics[TRIAL_KEY])
    assert TRIAL_LABEL in header((runs["sweep"] / "results.md").read_text(), "run")

    folds = [json.loads((runs["folds"] / f"fold-{k}" / "metrics.json").read_text())[TRIAL_KEY] for k in (1, 2)]
    with open(runs["folds"] / "results.csv", newline="") as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert float(table["mean"][TRIAL_KEY]) == pytest.approx(np.mean(folds))
    assert float(table["std"][TRIAL_KEY]) == pytest.approx(np.std(folds, ddof=1))
    assert TRIAL_LABEL in header((runs["folds"] / "results.md").read_text(), "fold")


def test_a_metric_added_to_the_table_is_on_the_model_card_and_evaluates_line(runs, capsys, monkeypatch):
    from pydantic import TypeAdapter

    from facetl.runtime import Runtime
    from facetl.serve.runs import ModelCard, open_runs

    with_trial_metric(monkeypatch)
    metrics = json.loads((runs["run"] / "metrics.json").read_text())
    [served] = open_runs([str(runs["run"])], "torch", Runtime.for_inference("cpu", "fp32"))
    card = TypeAdapter(ModelCard).dump_python(served.card, mode="json")  # as GET /api/models answers it
    assert card["metrics"][TRIAL_KEY] == pytest.approx(metrics[TRIAL_KEY])

    result = in_process(capsys, "evaluate", str(runs["run"]), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("test: "))
    assert f"{TRIAL_LABEL} " in line and "balanced acc " in line


def test_every_score_in_metrics_json_has_an_entry_in_the_table(runs):
    """metrics.json holds the table's metrics and facts about the run, nothing that scores the predictions
    without being in the table (where the report, sweeps, folds and cards would not show it)."""
    for folder in (runs["run"], runs["folds"] / "fold-1"):
        keys = set(json.loads((folder / "metrics.json").read_text()))
        table = {m.key for m in metric_table.METRICS} | {TRIAL_KEY}
        assert {m.key for m in metric_table.METRICS} <= keys
        assert keys - table <= RUN_FACTS, keys - table - RUN_FACTS


def test_the_sweep_and_the_model_card_show_balanced_accuracy_as_the_folds_do(runs):
    """A deliberate change: the tables that sum a run up all show the table's summary metrics; the sweep and
    the card lacked balanced accuracy, which is what exposes a model that always says the majority class."""
    metrics = json.loads((runs["run"] / "metrics.json").read_text())
    with open(runs["sweep"] / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["balanced_accuracy"]) == pytest.approx(metrics["balanced_accuracy"])
    assert "balanced acc" in header((runs["sweep"] / "results.md").read_text(), "run")
    assert "balanced acc" in header((runs["folds"] / "results.md").read_text(), "fold")


# ---- one module reads a run folder: a damaged file is one line naming it, wherever it is read

@pytest.mark.parametrize("name, damage, words", [
    ("metrics.json", "{not json", ["metrics.json", "damaged"]),
    ("history.csv", None, ["history.csv", "line 3"]),
    ("run.json", "[]", ["run.json", "damaged run record"]),
], ids=["metrics", "history", "record"])
def test_a_sweep_rerun_over_a_damaged_run_file_is_one_line_naming_it(runs, tmp_path, capsys, name, damage, words):
    import shutil

    from commandline import one_line_error

    sweep = tmp_path / "sweep"
    shutil.copytree(runs["sweep"], sweep)
    path = sweep / "lr-1e-3" / name
    if damage is None:
        with open(path, "a") as f:
            f.write("x,y,z\n")
    else:
        path.write_text(damage)
    result = in_process(capsys, "sweep", "--data", str(runs["data"]), "--weights", "none", "--img-size", "32",
                        "--strategy", "full", "--epochs", "1", "--grid", "lr=1e-3", "--out", str(sweep))
    one_line_error(result, *words)
