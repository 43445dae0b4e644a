"""The flags several commands share, declared once so that one idea has one name and one meaning everywhere.

A command (facetl/commands/X.py) declares its own arguments with these: the data, the image size, the run, the
output and --overwrite, the cache folder, device and precision, and the training options generated from
TrainConfig (one flag per key, grouped for --help). A renamed flag keeps its old name as a hidden alias that warns
(`renamed`). Parser refuses abbreviations and sends every error to the command's own --help.
"""
from __future__ import annotations

import argparse
import difflib
import sys

from facetl.config import (BOUNDS, FIELDS, HELP, RECIPE_KEYS, TRACKING_KEYS, TrainConfig, build_config, load_yaml,
                           with_old_recipe)
from facetl.errors import FacetlError

RANGE = {key: (low, high) for key, low, high in BOUNDS}  # the configuration's bounds, for flags outside it
DEFAULTS = TrainConfig()


class Parser(argparse.ArgumentParser):
    """No abbreviations (`--epoch` is not `--epochs`), and an error is one line naming this command's --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # a command's parser refuses what it does not know itself, so the error names its own --help
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and " " in self.prog:
            self.error("unrecognized arguments: " + " ".join(extras) + self._suggestion(extras))
        return namespace, extras

    def _suggestion(self, extras: list[str]) -> str:
        shown = [o for a in self._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        for extra in extras:
            close = difflib.get_close_matches(extra.split("=")[0], shown, n=1, cutoff=0.75)
            if extra.startswith("--") and close:
                return f"; did you mean {close[0]}?"
        return ""

    def error(self, message: str):  # one line, not usage plus a line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; help beside flags up to 20 characters (most of them)."""

    def __init__(self, prog: str, **kwargs):
        super().__init__(prog, max_help_position=22, **kwargs)


def whole_number(low: int, high: int):
    """An argparse type: an integer from low to high, or one line saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high})")
        return value
    return parse


class _Renamed(argparse.Action):
    """An old flag name: does what the new one does, after one warning line naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is now {self.new}; the old name will go", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def renamed(parser, old: str, new: argparse.Action) -> None:
    """Keep `old` working as a hidden alias of the flag `new` (the Action add_argument returned)."""
    parser.add_argument(old, action=_Renamed, new=new.option_strings[0], dest=new.dest, nargs=new.nargs,
                        const=new.const, type=new.type, choices=new.choices, metavar=new.metavar)


def examples_epilog(examples: list[tuple[str, str]], short: int = 70) -> str:
    """Each example on its own line, as it would be typed; a why beside a short one, under a long one."""
    width = max([len(line) for line, _ in examples if len(line) <= short] or [0])
    return "examples:\n" + "\n".join(f"  {line:<{width}}  # {why}" if len(line) <= short else
                                       f"  {line}\n      # {why}" for line, why in examples)


# --- the arguments several commands take -----------------------------------------------------------------------

def add_run(parser, help: str = "a run folder (with best.pt)", **kwargs) -> argparse.Action:
    return parser.add_argument("run", metavar="RUN", help=help, **kwargs)


def add_data(group, required: bool = False, target: bool = True, help: str = HELP["data"]) -> argparse.Action:
    """--data, --images and --target: what the train, inspect, faces and evaluate commands read."""
    data = group.add_argument("--data", metavar="PATH", required=required, help=help)
    group.add_argument("--images", metavar="DIR", help="image folder for a table (default: the table's folder)")
    if target:
        group.add_argument("--target", metavar="COLUMN", help="attribute column of a table (Smiling, Male, ...)")
    return data


def add_img_size(group, default: int | None, help: str) -> argparse.Action:
    return group.add_argument("--img-size", type=whole_number(*RANGE["img_size"]), default=default, metavar="N",
                              help=help)


def add_min_face(group, default: int | None, help: str) -> argparse.Action:
    return group.add_argument("--min-face", type=whole_number(*RANGE["min_face"]), default=default,
                              metavar="PIXELS", help=help)


def add_out(group, help: str, metavar: str = "DIR", **kwargs) -> argparse.Action:
    return group.add_argument("--out", metavar=metavar, help=help, **kwargs)


def add_overwrite(group, what: str = "existing output files") -> argparse.Action:
    return group.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_cache_dir(group) -> argparse.Action:
    return group.add_argument("--cache-dir", metavar="DIR", help="cache folder (default $FACETL_CACHE or "
                                                                 "~/.cache/facetl)")


def add_runtime_flags(parser) -> None:
    """Device and precision are this machine's choice, whatever the run was trained on."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                       help="where to run (default auto: a GPU if there is one)")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="autocast on this machine (default auto: what is fast here)")


# --- the training options, one flag per TrainConfig key ----------------------------------------------------------

# --help's groups, in order; a key in no group lands in "other options". Keys TrainConfig no longer has are skipped.
GROUPS = {
    "data": ("data", "images", "target", "positive", "split", "split_file", "split_by", "folds", "limit",
             "duplicates", "groups"),
    "images and faces": ("img_size", "normalize", "colour", "faces", "multi_face", "min_face", "landmarks"),
    "model": ("backbone", "weights", "head", "strategy", "unfreeze", "dropout"),
    "recipe (left out: the recipe's choice for the backbone, weights and data, said in train.log)":
        RECIPE_KEYS + ("warmup",),
    "training": ("label_smoothing", "patience", "ema", "select", "balance", "threshold", "precise_bn", "calibrate",
                 "seed"),
    "runtime": ("device", "precision", "workers", "compile", "cache", "cache_dir", "cache_views"),
    "output": ("out",),
    "tracking": ("track", "track_dir", "tracking_uri"),
}
HIDDEN = ("track_group",)
# short metavars keep a flag and its help on one line; a key not here is N (whole number), X (number) or WORD
METAVARS = {"data": "PATH", "images": "DIR", "target": "COLUMN", "positive": "CLASS", "split": "F", "split_file": "CSV",
            "split_by": "GROUPS", "groups": "GROUPS", "normalize": "X", "augment": "AUG", "backbone": "NAME",
            "weights": "NAME", "unfreeze": "PLAN", "lr": "LR", "cache_dir": "DIR", "out": "DIR", "track": "NAME",
            "track_dir": "DIR", "tracking_uri": "URI", "threshold": "P"}  # set by sweep and --folds for their runs, never by a user
NONE_MEANS = {"warmup": "0", "patience": "off", "ema": "off"}


def add_config_flags(parser, exclude: tuple[str, ...] = ()) -> dict[str, argparse._ArgumentGroup]:
    """--config and a flag per TrainConfig key (but `exclude`), in --help's groups; returns the groups by title's
    first word, for the command's own flags."""
    parser.usage = "%(prog)s --data PATH [options]"
    parser.add_argument("--config", metavar="YAML", help="a file supplying any of these options; flags override it")
    groups = {title.split()[0]: parser.add_argument_group(title) for title in GROUPS}
    placed = {key: groups[title.split()[0]] for title, keys in GROUPS.items() for key in keys}
    for name in FIELDS:
        if name not in exclude:
            _add_config_flag(placed.get(name, parser), name)
    _add_tracking_flags(groups["tracking"], exclude)
    return groups


def _add_tracking_flags(group, exclude: tuple[str, ...]) -> None:
    """The command's tracking settings (facetl/track/settings.py), not the run's config; --track-group hidden."""
    from facetl.track.settings import HELP as TRACKING_HELP

    for name in TRACKING_KEYS:
        if name not in exclude:
            text = TRACKING_HELP[name]
            said = (text.replace("(None: ", "(default ") if "(None: " in text else
                    text + " (default none)" if name == "track" else text)
            group.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                               metavar=METAVARS.get(name, "WORD"), nargs="+" if name == "track" else None,
                               help=argparse.SUPPRESS if name in HIDDEN else said)


def _add_config_flag(group, name: str) -> None:
    if name == "cache":
        group.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                           default=argparse.SUPPRESS, help="recompute everything; no decoded or feature cache")
    elif name == "compile":
        group.add_argument("--compile", dest="compile", action="store_const", const=True,
                           default=argparse.SUPPRESS, help=HELP["compile"])
    else:
        is_list = "list" in str(FIELDS[name].type)
        group.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                           metavar=metavar(name), nargs="+" if is_list else None,
                           help=argparse.SUPPRESS if name in HIDDEN else config_help(name))


def metavar(name: str) -> str:
    kind = str(FIELDS[name].type)
    return METAVARS.get(name) or ("N" if "int" in kind else "X" if "float" in kind else "WORD")


def config_help(name: str) -> str:
    """The key's help line with its default said in words: never `None` or a Python list."""
    text = HELP.get(name, "").replace(" (None)", "")
    if "(None: " in text:  # the help says what leaving it out means
        return text.replace("(None: ", "(default ")
    if name in RECIPE_KEYS and getattr(DEFAULTS, name) is None:
        return text  # the group's title says the recipe chooses
    value = getattr(DEFAULTS, name)
    if value is None:
        said = NONE_MEANS.get(name)
    elif isinstance(value, list):
        said = " ".join(str(v) for v in value) or "none"
    else:
        said = str(value)
    return f"{text} (default {said})" if said else text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = with_old_recipe(load_yaml(args.config)) if getattr(args, "config", None) else {}
    for name in FIELDS:
        if hasattr(args, name):
            value = getattr(args, name)
            if isinstance(value, list):
                value = ",".join(value)
            values[name] = value
    return build_config(values)


# --- what several commands' run functions share ------------------------------------------------------------------

def oom_guard(run, batch_size: int | None):
    """run(), with the GPU running out of memory said as one line naming a smaller --batch-size."""
    import torch

    try:
        return run()
    except torch.OutOfMemoryError:
        if batch_size is None:  # the recipe's, said in the log
            raise FacetlError("the GPU ran out of memory with the recipe's batch size (train.log says it); try "
                              "a smaller --batch-size") from None
        raise FacetlError(f"the GPU ran out of memory with --batch-size {batch_size}; try "
                          f"--batch-size {max(1, batch_size // 2)}") from None
