"""Write a split's evaluation into a run folder: metrics.json, the plots, and report.md tying them together."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from facetl.evaluate.metrics import (CALIBRATION_BINS, attribute_mean_keys, attribute_metrics,
                                     classification_metrics, group_metrics, group_metrics_shown, metric_table,
                                     per_class_auc, summary_metrics, val_loss_jumps)
from facetl.evaluate.plots import (plot_attribute_metrics, plot_confusion, plot_curves, plot_errors,
                                   plot_precision_recall, plot_reliability, plot_roc)
from facetl.evaluate.predictions import SplitResult
from facetl import history as epoch_history
from facetl.record import RunRecord
from facetl.runfolder import atomic_write_csv, atomic_write_json, atomic_write_text
from facetl.tables import markdown_table


JUMP_FACTOR = 1.5  # a validation loss above 1.5x the best before it is a jump worth a sentence
WEAKEST_SHOWN = 3  # classes named under a many-class ROC
GROUPS_SHOWN = 40  # rows of the per-group table in report.md; groups.csv has every group


def write_evaluation(folder: Path, result: SplitResult, record: RunRecord, history: list[dict],
                     config: dict, tta: str = "none") -> dict:
    """Compute metrics on a split and write metrics.json, plots and report.md into `folder`. `tta`: the
    test-time augmentation the probabilities were computed with (recorded, not applied here)."""
    folder.mkdir(parents=True, exist_ok=True)
    if record.multi_attribute:
        return write_attribute_evaluation(folder, result, record, history, config, tta)
    class_names = record.class_names
    metrics = classification_metrics(result.labels, result.probs, record.threshold)
    metrics["threshold_rule"] = record.threshold_rule
    metrics.update({
        "split": result.split,
        "tta": tta,
        "class_names": class_names,
        "train_seconds": record.train_seconds,
        "trainable_params": record.trainable_params,
        "best_epoch": record.best_epoch,
        "pretraining": record.weights.describe(),
        "pretrained": record.weights.pretrained,
        "roc_auc_per_class": {class_names[c]: auc for c, auc in per_class_auc(result.labels, result.probs).items()},
        "ece_bins": CALIBRATION_BINS,
        "temperature": record.temperature,
        "calibration": record.calibration.describe() if record.calibration else None,
    })
    (folder / "groups.csv").unlink(missing_ok=True)  # an earlier evaluation's, by other groups
    if result.groups is not None:
        metrics["groups"] = {"by": result.group_by, **group_metrics(result.labels, result.probs, list(result.groups),
                                                                    record.threshold)}
        write_groups_csv(folder / "groups.csv", metrics["groups"])
    if history:
        plot_curves(history, folder / "curves.png", title=record.title, best_epoch=record.best_epoch,
                    select=config.get("select"))
    plot_confusion(metrics["confusion_matrix"], class_names, folder / "confusion_matrix.png")
    plot_roc(result.labels, result.probs, class_names, folder / "roc.png")
    if len(class_names) == 2:
        plot_precision_recall(result.labels, result.probs, class_names, folder / "precision_recall.png",
                              record.threshold)
    plot_reliability(result.labels, result.probs, class_names, folder / "reliability.png", result.split,
                     record.temperature)
    plot_errors(result, class_names, folder / "errors.png", threshold=record.threshold)
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_text(folder / "report.md", render_report(metrics, record, config, history,
                                                          gradcam=(folder / "gradcam.png").is_file()))
    return metrics


def _run_facts(record: RunRecord, split: str, tta: str) -> dict:
    return {"split": split, "tta": tta, "class_names": record.class_names, "train_seconds": record.train_seconds,
            "trainable_params": record.trainable_params, "best_epoch": record.best_epoch,
            "pretraining": record.weights.describe(), "pretrained": record.weights.pretrained}


def write_attribute_evaluation(folder: Path, result: SplitResult, record: RunRecord, history: list[dict],
                               config: dict, tta: str = "none") -> dict:
    """A multi-attribute run: metrics per attribute and their means (metrics.json; the means at the top level,
    where a single-target run has its own, so sweeps and results tables read both alike), attributes.png,
    and report.md with the table."""
    metrics = attribute_metrics(result.labels, result.probs, record.class_names, record.thresholds)
    metrics.update(_run_facts(record, result.split, tta), task=record.task, thresholds=record.thresholds,
                   threshold_rule=record.threshold_rule, ece_bins=CALIBRATION_BINS)
    if history:
        plot_curves(history, folder / "curves.png", title=record.title, best_epoch=record.best_epoch,
                    select=config.get("select"))
    plot_attribute_metrics(metrics, folder / "attributes.png", f"{record.title}: {result.split} split")
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_text(folder / "report.md", render_attribute_report(metrics, record, config, history))
    return metrics


def attribute_table(metrics: dict) -> list[str]:
    """The per-attribute table (markdown): every metric of the table; its last row the means over the attributes."""
    header = ["attribute", "images", "base rate", "threshold", *(m.label for m in metric_table())]
    keys = ["n_images", "base_rate", "threshold", *(m.key for m in metric_table())]
    averaged = attribute_mean_keys()
    rows = [[name, *(_fmt(m.get(k)) for k in keys)] for name, m in metrics["attributes"].items()]
    rows.append(["**mean**", "", *(f"**{_fmt(metrics.get(k))}**" if k in averaged else "" for k in keys[1:])])
    return markdown_table(header, rows)


def render_attribute_report(metrics: dict, record: RunRecord, config: dict, history: list[dict]) -> str:
    rule = record.threshold_rule or "0.5"
    why = {"f1": "each chosen on the validation split to maximise that attribute's F1",
           "balanced": "each chosen on the validation split to maximise that attribute's balanced accuracy"
           }.get(rule, "fixed (--threshold)")
    lines = [*header_lines(record, config),
             f"## Metrics per attribute on the {metrics['split']} split ({metrics['n_images']} images)", "",
             f"One model, one sigmoid output per attribute ({len(record.class_names)}). Each attribute is scored on "
             "the images that have its value (a missing value is left out of that attribute only); the last row is "
             f"the mean over the attributes. Thresholds: {why}. A base rate far from 0.5 makes accuracy look good: "
             "balanced accuracy of 0.5 is chance.", "", *attribute_table(metrics), "",
             "![metrics per attribute](attributes.png)", ""]
    if metrics.get("tta", "none") != "none":
        lines += [f"Test-time augmentation, tta: {metrics['tta']}: each image's probabilities are the mean of the "
                  "image's and its mirror image's.", ""]
    if history:
        lines += ["## Training", "", "![curves](curves.png)", "",
                  "Accuracy in training and validation is over every observed (image, attribute) label at 0.5.", "",
                  *history_table(history, config)]
        lines.append("")
    lines += ["## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write_groups_csv(path: Path, groups: dict) -> None:
    """One row per group, then the largest gap of each metric (over groups of at least gap_min_images)."""
    columns = ["group", "n", "base_rate", *(m.key for m in group_metrics_shown())]
    rows = [[r[c] for c in columns] for r in groups["per_group"]]
    gaps = groups["gaps"]
    rows.append(["largest gap", "", ""] + [gaps[k]["gap"] if gaps[k] else None for k in columns[3:]])
    atomic_write_csv(path, columns, rows)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _optimisation(config: dict) -> str:
    parts = [f"{config.get('optimizer') or 'adam'}, lr {_fmt_lr(config.get('lr'))}"]
    if config.get("lr_decay") not in (None, 1, 1.0):
        parts.append(f"x{config['lr_decay']:g} per earlier block")
    parts.append(f"weight decay {config.get('weight_decay') or 0:g}, {config.get('scheduler') or 'none'} schedule"
                 + (f", warm-up {config['warmup']:g} epochs" if config.get("warmup") else ""))
    if config.get("strategy") == "gradual":
        parts.append(f"unfreezing {config.get('unfreeze')}")
    for key, name in (("ema", "EMA"), ("label_smoothing", "label smoothing"), ("patience", "patience")):
        if config.get(key):
            parts.append(f"{name} {config[key]:g}")
    return "; ".join(parts) + f"; {config.get('epochs')} epochs, batch {config.get('batch_size')}"


def _fmt_lr(value) -> str:
    return "" if value in (None, "") else f"{float(value):.3g}"


def render_report(metrics: dict, record: RunRecord, config: dict, history: list[dict],
                  gradcam: bool = False) -> str:
    shown = summary_metrics()
    lines = header_lines(record, config)
    lines += [f"## Metrics on the {metrics['split']} split ({metrics['n_images']} images)", "",
              *markdown_table([m.title for m in shown], [[m.format(metrics.get(m.key)) for m in shown]]), ""]
    if len(metrics["class_names"]) == 2:
        lines += [threshold_sentence(metrics), ""]
    if metrics.get("tta", "none") != "none":
        lines += [f"Test-time augmentation, tta: {metrics['tta']}: each image's class probabilities are the mean "
                  "of the image's and its mirror image's.", ""]
    if history:
        lines += ["## Training", "", "![curves](curves.png)", "", *history_table(history, config)]
        lines.append("")
        jumps = val_loss_jumps(history, JUMP_FACTOR)
        if jumps:
            lines += [jump_sentence(jumps), ""]
    lines += ["## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", "",
              "## ROC", "", "![roc](roc.png)", ""]
    if len(metrics["class_names"]) == 2:
        lines += ["## Precision and recall", "", "![precision-recall](precision_recall.png)", ""]
    lines += calibration_lines(metrics)
    if metrics.get("groups"):
        lines += group_lines(metrics["groups"])
    if len(metrics["class_names"]) > 2 and metrics.get("roc_auc_per_class"):
        lines += [weakest_sentence(metrics["roc_auc_per_class"]), ""]
    lines += ["## Most confident mistakes", "", "![errors](errors.png)", "", mistakes_sentence(metrics), ""]
    if gradcam:  # written by facetl evaluate (facetl.gradcam), beside errors.png
        lines += ["## Where the network looks", "",
                  f"Grad-CAM of the most confident right and wrong {metrics['split']} images: gradcam.png", "",
                  "![gradcam](gradcam.png)", ""]
    lines += ["## Configuration", "", "```yaml"]
    lines += [yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def header_lines(record: RunRecord, config: dict) -> list[str]:
    """The run in a few lines: weights, strategy, preprocessing, best epoch, optimisation, recipe, time."""
    return [f"# {record.title}", "",
            f"**Backbone weights:** {record.weights.describe()}  ",
            f"**Strategy:** {config.get('strategy')} — {record.trainable_params:,} trainable of "
            f"{record.total_params:,} parameters  ",
            f"**Preprocessing:** {record.preprocessing.describe()}  ",
            f"**Best epoch:** {record.best_epoch} (selected by {config.get('select')})"
            + (f"; stopped early after epoch {record.stopped_after} ("
               + (record.stopped_because or f"--patience {config.get('patience')}") + ")"
               if record.stopped_after else "") + "  ",
            f"**Optimisation:** {_optimisation(config)}  ",
            *([f"**Recipe:** {line.removeprefix('recipe ')}  " for line in record.recipe]),
            f"**Training time:** {record.train_seconds or 0:.1f} s ({record.trained_with.describe()})  ",
            *(["**Wall time:** " + ", ".join(f"{k} {v:.1f} s" for k, v in record.wall_seconds.items()) + "  "]
              if record.wall_seconds else []),
            f"**Data path:** {record.data_path_note}", ""]


def calibration_lines(metrics: dict) -> list[str]:
    """ECE of this split, what it measures, and the temperature when the run was calibrated."""
    binary = len(metrics["class_names"]) == 2
    what = (f"the probability of {metrics['class_names'][1]} against how often it is {metrics['class_names'][1]}"
            if binary else "the top class's probability against how often the top class is right")
    lines = ["## Calibration", "",
             f"Expected calibration error on the {metrics['split']} split: **{_fmt(metrics.get('ece'))}** "
             f"({what}, in {metrics.get('ece_bins', CALIBRATION_BINS)} equal bins; 0 is perfectly calibrated).", ""]
    if metrics.get("calibration"):
        lines += [f"Calibrated (--calibrate temperature): {metrics['calibration']}. Every probability of this run "
                  f"is computed from logits divided by T.", ""]
    return lines + ["![reliability](reliability.png)", ""]


def group_lines(groups: dict) -> list[str]:
    """The per-group table (largest groups first when there are many) and the largest gaps."""
    rows = sorted(groups["per_group"], key=lambda r: -r["n"])
    shown = rows[:GROUPS_SHOWN]
    metrics = group_metrics_shown()
    header = ["group", "images", "base rate", *(m.label for m in metrics)]
    rows = [[r["group"], r["n"], _fmt(r["base_rate"]), *(m.format(r[m.key]) for m in metrics)]
            for r in sorted(shown, key=lambda r: r["group"])]
    gaps = [groups["gaps"][m.key] for m in metrics]
    rows.append(["**largest gap**", "", "",
                 *(f"**{g['gap']:.4f}** ({g['lowest']} to {g['highest']})" if g else "n/a" for g in gaps)])
    lines = [f"## Per group ({groups['by']})", "", *markdown_table(header, rows)]
    lines += ["", f"Gaps are over the {groups['groups_in_gaps']} group(s) with at least {groups['gap_min_images']} "
              "images; smaller groups are listed but their scores move in large steps. F1 is n/a in a group "
              "without the positive class, ROC-AUC in a group with one class."
              + (f" The {len(rows) - len(shown)} smallest groups are only in groups.csv." if len(rows) > len(shown)
                 else " Every group is also in groups.csv."), ""]
    return lines


def threshold_sentence(metrics: dict) -> str:
    """Which threshold decided the labels above, and why; with the base rate, so a majority-class model shows."""
    rule = metrics.get("threshold_rule") or "0.5"
    why = {"f1": "chosen on the validation split to maximise F1",
           "balanced": "chosen on the validation split to maximise balanced accuracy"}.get(rule, "fixed (--threshold)")
    base = metrics.get("base_rate")
    names = metrics["class_names"]
    return (f"Labels are decided by threshold {metrics['threshold']:.3f} on the probability of {names[1]} ({why})."
            + (f" {names[1]} is {base:.1%} of these images: a model that always says {names[0]} scores "
               f"{1 - base:.1%} accuracy and 50% balanced accuracy." if base is not None else ""))


def jump_sentence(jumps: list[dict]) -> str:
    """One sentence on the validation-loss jumps, describing the largest."""
    worst = max(jumps, key=lambda j: j["val_loss"] / j["best_loss"] if np.isfinite(j["val_loss"]) else np.inf)
    where = (f"epoch {worst['epoch']}" if len(jumps) == 1
             else "epochs " + ", ".join(str(j["epoch"]) for j in jumps) + f" (most at epoch {worst['epoch']})")
    size = (f"to {worst['val_loss']:.4f}, {worst['val_loss'] / worst['best_loss']:.1f}x"
            if np.isfinite(worst["val_loss"]) else f"to {worst['val_loss']}, against")
    return (f"**Validation loss jumped** at {where} {size} the lowest before it ({worst['best_loss']:.4f} at "
            f"epoch {worst['best_epoch']}; any epoch above {JUMP_FACTOR}x the best earlier one is flagged).")


def weakest_sentence(aucs: dict[str, float]) -> str:
    weakest = sorted(aucs, key=aucs.get)[:WEAKEST_SHOWN]
    return "Lowest one-vs-rest ROC-AUC: " + ", ".join(f"{name} ({aucs[name]:.3f})" for name in weakest) + "."


def mistakes_sentence(metrics: dict) -> str:
    wrong = int(metrics["n_images"] - np.trace(np.asarray(metrics["confusion_matrix"])))
    if wrong == 0:
        return f"None of the {metrics['n_images']} images was misclassified."
    return (f"{wrong} of {metrics['n_images']} images were misclassified; the gallery shows the most confident "
            "of them, each with its file, true label, and the predicted label with its probability.")


def history_table(history: list[dict], config: dict) -> list[str]:
    """The per-epoch table of a report's Training section: facetl.history's columns."""
    return markdown_table([c.label for c in epoch_history.COLUMNS],
                          [epoch_history.shown(h, config.get("strategy")) for h in history])
