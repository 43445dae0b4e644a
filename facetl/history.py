"""The epoch-history table: the one place that names the columns of history.csv, each epoch's row in fit, what
the trackers log per epoch and how a reader parses a cell back, as facetl.evaluate.metrics.METRICS is for the
final metrics. A new column is one line in COLUMNS; fit fills it, history.csv writes it, readers read it.

Runs from before a column existed leave it empty; readers get None."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochColumn:
    key: str                       # history.csv's header and the row's key
    label: str                     # as a person reads it (the report's table)
    kind: str                      # "int", "text", "number" (6 decimals) or "lr" (6 significant digits)
    shown: str                     # how the report's table shows a value (a format spec)
    tensorboard: str | None = None  # its TensorBoard tag, when tracked there
    mlflow: bool = False           # logged to MLflow each epoch


COLUMNS: tuple[EpochColumn, ...] = (
    EpochColumn("epoch", "epoch", "int", ""),
    EpochColumn("train_loss", "train loss", "number", ".4f", "train/loss", True),
    EpochColumn("train_acc", "train acc", "number", ".4f", "train/acc", True),
    EpochColumn("val_loss", "val loss", "number", ".4f", "val/loss", True),
    EpochColumn("val_acc", "val acc", "number", ".4f", "val/acc", True),
    EpochColumn("lr", "lr", "lr", ".3g", "lr", True),
    EpochColumn("strategy", "trains", "text", ""),
    EpochColumn("seconds", "seconds", "number", ".1f", None, True),
)
EPOCH, TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, LR, STRATEGY, SECONDS = (c.key for c in COLUMNS)
HEADER = [c.key for c in COLUMNS]
TENSORBOARD_SCALARS = {c.tensorboard: c.key for c in COLUMNS if c.tensorboard}
MLFLOW_METRICS = tuple(c.key for c in COLUMNS if c.mlflow)
KINDS = {c.key: c.kind for c in COLUMNS}


def epoch_row(epoch: int, train: tuple[float, float], val: dict, lr: float, strategy: str, seconds: float) -> dict:
    """One epoch's row: `train` its (loss, accuracy), `val` the validation's {"loss", "acc"}."""
    return {EPOCH: epoch, TRAIN_LOSS: train[0], TRAIN_ACC: train[1], VAL_LOSS: val["loss"], VAL_ACC: val["acc"],
            LR: lr, STRATEGY: strategy, SECONDS: seconds}


def cells(row: dict) -> list[str]:
    """One history.csv row; runs from before a column existed leave it empty."""
    out = []
    for column in COLUMNS:
        value = row.get(column.key)
        out.append("" if value is None else str(value) if column.kind in ("int", "text") else
                   f"{value:.6g}" if column.kind == "lr" else f"{value:.6f}")
    return out


def shown(row: dict, strategy: str | None = None) -> list[str]:
    """One row of the report's epoch table; an empty cell where a run from before a column existed has none
    (`strategy`: the run's, for rows from before each epoch recorded what trained)."""
    values = {**row, STRATEGY: row.get(STRATEGY) or strategy}
    return ["" if values.get(c.key) in (None, "") else format(values[c.key], c.shown) for c in COLUMNS]


def parse(column: str, text: str):
    """A history.csv cell back to its value (None when empty); ValueError when it is not one."""
    kind = KINDS.get(column, "number")
    if kind == "int":
        return int(text)
    if kind == "text" or text == "":
        return text or None
    return float(text)
