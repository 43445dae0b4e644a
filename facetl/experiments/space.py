"""A search's space: `--space lr=log:1e-5:1e-2 --space strategy=frozen,last-block` as dimensions Optuna draws
from, each checked on the base config at its ends (or every choice) before the first trial starts."""
from __future__ import annotations

from dataclasses import dataclass

from facetl.config import FIELDS, TrainConfig, build_config
from facetl.errors import FacetlError

KINDS = ("log", "float", "int")
SPACE_HELP = "write KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH or KEY=A,B,C"


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (log, float, int) or a list of values (choice)."""

    key: str
    kind: str                      # log | float | int | choice
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    whole: bool = False            # an integer key: log and int draw whole numbers

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.whole or self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.kind == "log")
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def probes(self) -> list:
        """Values that show whether the whole dimension is valid: its ends, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


def parse_space(items: list[str]) -> list[Dimension]:
    """--space items as dimensions; a malformed one is one line naming it and saying how to write it."""
    if not items:
        raise FacetlError(f"give the keys to search with --space ({SPACE_HELP})")
    space = [_dimension(item) for item in items]
    keys = [d.key for d in space]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise FacetlError(f"--space gives {', '.join(repeated)} more than once")
    return space


def _dimension(item: str) -> Dimension:
    key, sep, text = item.partition("=")
    key, text = key.strip().replace("-", "_"), text.strip()
    if not sep or not key or not text:
        raise FacetlError(f"--space {item!r}: {SPACE_HELP}")
    if key not in FIELDS or key in ("out", "data", "images", "split_file", "folds"):
        raise FacetlError(f"--space {item!r}: {key!r} is not a configuration key that a search can vary")
    kind, _, bounds = text.partition(":")
    kind_of_key = str(FIELDS[key].type)
    if kind not in KINDS:  # a list of values; a list-valued key takes ';' between them, as --grid does
        separator = ";" if "list" in kind_of_key else ","
        choices = tuple(v.strip() for v in text.split(separator) if v.strip())
        if not choices:
            raise FacetlError(f"--space {item!r}: {SPACE_HELP}")
        return Dimension(key, "choice", choices=choices)
    low, sep, high = bounds.partition(":")
    if not sep or ":" in high:
        raise FacetlError(f"--space {item!r}: {SPACE_HELP}")
    whole = "int" in kind_of_key and "float" not in kind_of_key
    if "int" not in kind_of_key and "float" not in kind_of_key:
        raise FacetlError(f"--space {item!r}: {key} is not a number; give its values, {key}=A,B,C")
    if whole and kind == "float":
        raise FacetlError(f"--space {item!r}: {key} is a whole number; use int:LOW:HIGH or log:LOW:HIGH")
    low, high = _bound(item, low, whole or kind == "int"), _bound(item, high, whole or kind == "int")
    if not low < high:
        raise FacetlError(f"--space {item!r}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise FacetlError(f"--space {item!r}: a log range needs LOW above 0")
    return Dimension(key, kind, low, high, whole=whole)


def _bound(item: str, text: str, whole: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FacetlError(f"--space {item!r}: {text.strip()!r} is not a number") from None
    if whole and not value.is_integer():
        raise FacetlError(f"--space {item!r}: {text.strip()!r} is not a whole number")
    return int(value) if whole else value


def check_space(space: list[Dimension], base: TrainConfig) -> None:
    """Every trial's config is valid before the first starts: each range's ends and each choice, on the base."""
    for dimension in space:
        for value in dimension.probes():
            try:
                build_config({dimension.key: value}, base).check()
            except FacetlError as exc:
                raise FacetlError(f"--space {dimension.key}={value}: {exc}") from None
