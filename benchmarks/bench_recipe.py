"""The training recipe on real faces: one markdown table per question, with the figures side by side.

A. Smile from scratch (SMILEsmileD, MobileNetV2, 64 px grey, no pretraining, whole network trains):
   the studies' recipe, a practitioner's recipe (the one issue 13 measured), facetl's defaults (no training
   flag given) and a stronger recipe (defaults + EMA + label smoothing + more epochs).
B. Transfer between face tasks: the defaults run of A as `--weights RUN`, to gender on celebrity faces with
   a person-safe split (`--split-by identity`): frozen, last-block, full and gradual with facetl's defaults,
   next to a logistic regression fitted on the same frozen features (what those features support) and the
   same task from scratch.
C. Transfer between face tasks on people the source never saw (the offline demo's task, on a bigger budget:
   every image of the other half and the recipe's epochs): the demo's gender run on half the celebrities
   (facetl/commands/demo.py share_people, configs/demo_pretrain_gender.yaml) to telling the other 12 apart, the same
   arms as B plus gradual unfreezing in three stages (head, last block, everything: the recipe's default
   until this benchmark showed head-then-everything, fastai's fine_tune, doing better).

    .venv/bin/python benchmarks/bench_recipe.py --smiles ../shared/datasets/SMILEsmileD/SMILEs \
        --celebrity ../shared/datasets/celebrity_faces_attributes.csv --images ../shared/datasets/celebrity_faces \
        --out /tmp/recipe [--quick] [--only A,B,C]

--quick: 600 images, 2 epochs per arm, to check that it runs (its figures mean nothing). Every arm is an
ordinary run folder under --out (report.md, curves.png, lr per epoch in history.csv); a finished arm is
reused when the script is run again, if it was trained as the arm would be now (else that arm's row says
so, and nothing is overwritten). Tables go to stdout and --out/results.md as each arm finishes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facetl.config import build_config
from facetl.commands.demo import difference
from facetl.train.fit import fit

STUDIES = {"optimizer": "adam", "lr": 1e-4, "epochs": 10, "scheduler": "none", "augment": "none", "weight_decay": 0,
           "lr_decay": 1, "warmup": 0}
PRACTITIONER = {"optimizer": "adam", "lr": 1e-3, "epochs": 12, "scheduler": "cosine", "warmup": 0, "weight_decay": 0,
                "lr_decay": 1, "augment": "flip,jitter,rotate:10"}
STRONGER = {"ema": 0.999, "label_smoothing": 0.1, "epochs": 30}
SMILE_ARMS = [("facetl defaults (no training flag)", "defaults", {}),
              ("practitioner: Adam 1e-3, cosine, flip+jitter+rotate, 12 epochs", "practitioner", PRACTITIONER),
              ("studies: Adam 1e-4, constant, no augmentation, 10 epochs", "studies", STUDIES),
              ("defaults + EMA 0.999 + label smoothing 0.1, 30 epochs", "stronger", STRONGER)]
TRANSFER_ARMS = [("frozen", "frozen", {"strategy": "frozen"}),
                 ("last-block", "last-block", {"strategy": "last-block"}),
                 ("full", "full", {"strategy": "full"}),
                 ("gradual (the head for one epoch, then everything; LR x0.5 per block)", "gradual",
                  {"strategy": "gradual"}),
                 ("from scratch (no pretraining, defaults)", "scratch", {"strategy": "full", "weights": "none"})]


def train(out: Path, values: dict, quick: bool) -> dict:
    folder = out / values["name"]
    settings = {k: v for k, v in values.items() if k != "name"}
    if quick:
        settings.update({"limit": 600, "epochs": 2})
    config = build_config({**settings, "out": str(folder)})
    if (folder / "metrics.json").is_file():  # reused only if trained as this arm would be (recipes change)
        why = difference(folder, config)
        if why is not None:
            raise RuntimeError(f"{folder} was trained otherwise ({why}): remove it or give another --out")
        metrics = json.loads((folder / "metrics.json").read_text())
        return {"folder": folder, **metrics, "reused": True}
    began = time.perf_counter()
    result = fit(config, progress=False, quiet=True)
    return {"folder": folder, **result.metrics, "wall": time.perf_counter() - began}


def row(name: str, result: dict) -> str:
    config = build_config_from(result["folder"])
    epochs = len((result["folder"] / "history.csv").read_text().strip().splitlines()) - 1
    return (f"| {name} | {result['accuracy']:.4f} | {result['balanced_accuracy']:.4f} | {result['roc_auc']:.4f} | "
            f"{config.get('optimizer')} {float(config.get('lr')):.2g} {config.get('scheduler')} | {epochs} | "
            f"{format(result['wall'], '.0f') if 'wall' in result else 'reused'} |")


def arm(name: str, run, say) -> dict | None:
    """One arm; a failure is one row saying why, and the other arms go on."""
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every arm it can
        say(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} |")
        return None
    say(row(name, result))
    return result


def build_config_from(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text())


def linear_probe(run_folder: Path, split_folder: Path) -> dict:
    """Logistic regression on the frozen run's own inputs to its head (pooled features of its frozen backbone),
    on its split: C chosen on validation, scored once on test."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    from facetl.data.load import data_root
    from facetl.data.split import load_split
    from facetl.data.store import cache_root, RowCut, open_image_store
    from facetl.inference.run import load_run
    from facetl.runreader import locate_data
    from facetl.runtime import Runtime

    run = load_run(run_folder)
    config = locate_data(run.config, run.folder)
    samples, assignment = load_split(split_folder / "split.csv", data_root(config), run.class_names)
    prep = run.record.preprocessing
    store = open_image_store(samples.files(), prep.size, cache_root(config.cache_dir), config.workers, False,
                             RowCut.of(prep))
    runtime = Runtime.for_inference()
    source = run.image_source(store.images, runtime)
    features = []
    with torch.inference_mode():
        for start in range(0, len(samples.paths), 256):
            z = source.batch(np.arange(start, min(start + 256, len(samples.paths))), None)
            features.append(z.float().mean(dim=(2, 3)).cpu().numpy())
    x, y = np.concatenate(features), samples.labels
    parts = {name: assignment == name for name in ("train", "val", "test")}
    best = None
    for c in (0.001, 0.01, 0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=3000).fit(x[parts["train"]], y[parts["train"]])
        score = accuracy_score(y[parts["val"]], model.predict(x[parts["val"]]))
        if best is None or score > best[0]:
            best = (score, c, model)
    model = best[2]
    p = model.predict_proba(x[parts["test"]])
    decided = model.classes_[p.argmax(1)]
    auc = (roc_auc_score(y[parts["test"]], p[:, 1]) if p.shape[1] == 2 else
           roc_auc_score(y[parts["test"]], p, multi_class="ovr", labels=model.classes_))
    return {"accuracy": accuracy_score(y[parts["test"]], decided),
            "balanced_accuracy": balanced_accuracy_score(y[parts["test"]], decided), "roc_auc": auc, "C": best[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smiles", required=True)
    parser.add_argument("--celebrity", required=True, help="celebrity_faces_attributes.csv")
    parser.add_argument("--images", required=True, help="the celebrity_faces folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="A,B")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(*new: str) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)
        (out / "results.md").write_text("\n".join(lines) + "\n")

    header = ["| recipe | test accuracy | balanced accuracy | ROC-AUC | optimiser, peak lr, schedule | epochs | "
              "wall s |", "|---|---|---|---|---|---|---|"]
    smile = {"data": args.smiles, "backbone": "mobilenet_v2", "weights": "none", "strategy": "full", "img_size": 64,
             "colour": "grey", "device": args.device}
    source = out / "smile-defaults"
    arms = SMILE_ARMS if "A" in args.only else SMILE_ARMS[:1] if "B" in args.only else []  # B's source is A's first
    if arms:
        say("## A. Smile from scratch: SMILEsmileD, MobileNetV2 64 px grey, no pretraining", "", *header)
    for i, (name, key, values) in enumerate(arms):
        arm(name, lambda: train(out, {**smile, **values, "name": f"smile-{key}"}, args.quick), say)
        if i == 0 and "B" in args.only:  # the smile model is the source: transfer next, the slow arms later
            transfer(args, out, source, say, TRANSFER_ARMS[:-1])
            if len(arms) > 1:
                say("", "## A, continued", "", *header)
    if "B" in args.only:
        transfer(args, out, source, say, TRANSFER_ARMS[-1:], heading=False)
    if "C" in args.only:
        identity(args, out, say)


def identity(args, out: Path, say) -> None:
    from facetl.config import load_yaml
    from facetl.commands.demo import PRETRAIN, share_people

    table, images = Path(args.celebrity).resolve(), Path(args.images).resolve()
    pretrain_table, people, words = share_people(table, images, "Male", out / "people")
    gender = {**load_yaml(PRETRAIN), "data": str(pretrain_table), "images": str(images), "device": args.device}
    source = arm("gender on the first half (the demo's pretraining)",
                 lambda: train(out, {**gender, "name": "people-gender"}, args.quick), lambda *_: None)
    if source is None:
        say("", "## C. failed: the gender run on the first half did not train")
        return
    say("", f"## C. Transfer: gender on half the celebrities ({source['folder'].name}, test accuracy "
        f"{source['accuracy']:.3f}, person-shared) to identity of the other half", "", words, "",
        "| strategy (facetl defaults) | test accuracy | balanced accuracy | ROC-AUC | optimiser, peak lr, schedule "
        "| epochs | wall s |", "|---|---|---|---|---|---|---|")
    # the recipe's gradual stages before this benchmark changed them, for comparison
    arms = TRANSFER_ARMS[:4] + [("gradual in three stages (1:frozen,3:last-block,7:full; LR x0.5 per block)",
                                 "gradual-stages", {"strategy": "gradual", "unfreeze": "1:frozen,3:last-block,7:full"})
                                ] + TRANSFER_ARMS[4:]
    base = {"data": str(people), "weights": str(source["folder"]), "device": args.device}
    first = None
    for name, key, values in arms:
        settings = {**base, **values, "name": f"identity-{key}"}
        if key == "scratch":  # the same size and colour as the transfer, and its epochs, not 40
            settings.update({"img_size": 32, "colour": "grey", "epochs": 10})
        if first is not None:
            settings["split_file"] = str(first / "split.csv")
        result = arm(name, lambda: train(out, settings, args.quick), say)
        if result is None:
            continue
        first = first or result["folder"]
        if key == "frozen":
            probe_row(result["folder"], say)


def probe_row(frozen_run: Path, say) -> None:
    """The row of a logistic regression on a frozen run's own features; a failure is a row saying why."""
    try:
        probe = linear_probe(frozen_run, frozen_run)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every arm it can
        say(f"| logistic regression on the frozen features | failed: {type(exc).__name__}: {exc} |")
        return
    say(f"| logistic regression on the same frozen features (C={probe['C']:g}, chosen on validation) | "
        f"{probe['accuracy']:.4f} | {probe['balanced_accuracy']:.4f} | {probe['roc_auc']:.4f} | sklearn lbfgs | - | - |")


def transfer(args, out: Path, source: Path, say, arms, heading: bool = True) -> None:
    gender = {"data": args.celebrity, "images": args.images, "target": "Male", "split_by": "identity",
              "weights": str(source), "device": args.device}
    say("", f"## B. Transfer: the smile model ({source.name}) to gender on celebrity faces, person-safe split"
        + ("" if heading else ", continued"), "",
        "| strategy (facetl defaults) | test accuracy | balanced accuracy | ROC-AUC | optimiser, peak lr, schedule "
        "| epochs | wall s |", "|---|---|---|---|---|---|---|")
    first = out / "gender-frozen" if (out / "gender-frozen" / "split.csv").is_file() else None
    for name, key, values in arms:
        settings = {**gender, **values, "name": f"gender-{key}"}
        if first is not None and key != "frozen":
            settings["split_file"] = str(first / "split.csv")
        result = arm(name, lambda: train(out, settings, args.quick), say)
        if result is None:
            continue
        first = first or result["folder"]
        if key == "frozen":
            probe_row(result["folder"], say)


if __name__ == "__main__":
    main()
