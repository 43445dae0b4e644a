"""A grid's points: `--grid lr=1e-3,1e-4 --grid strategy=...` parsed, and each point's (name, config), every one
checked before the first starts."""
from __future__ import annotations

import itertools
from pathlib import Path

from facetl.config import FIELDS, TrainConfig, build_config
from facetl.errors import FacetlError
from facetl.train.fit import check_output_places


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise FacetlError(f"--grid {item!r}: write KEY=VALUE1,VALUE2")
        if key not in FIELDS or key in ("out", "data"):
            raise FacetlError(f"--grid {item!r}: {key!r} is not a configuration key that a grid can vary")
        # a list-valued key takes ';' between grid values (augment=flip;flip,jitter), scalars take ','
        separator = ";" if "list" in str(FIELDS[key].type) else ","
        grid[key] = [v.strip() for v in values.split(separator) if v.strip()]
        repeated = sorted({v for v in grid[key] if grid[key].count(v) > 1})
        if repeated:  # one point twice would train one folder twice
            raise FacetlError(f"--grid {item!r} gives {key}={', '.join(repeated)} more than once")
    return grid


def run_name(combo: dict[str, str]) -> str:
    return "_".join(f"{k}-{v}".replace(":", "").replace("/", "-").replace(",", "+") for k, v in combo.items()) or "base"


def grid_configs(base: TrainConfig, grid: dict[str, list[str]], out: str | Path) -> list[tuple[str, TrainConfig]]:
    """Each point's (name, config), in grid order. Every combination is checked before the first one starts, or
    a folder is made."""
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*grid.values())] or [{}]
    configs = [(run_name(c), build_config(c, base)) for c in combos]
    for _, config in configs:
        config.check()
        check_output_places(config, out, run=False)
    refuse_same_points(configs)
    return configs


def refuse_same_points(configs: list[tuple[str, TrainConfig]]) -> None:
    """Two points that are one run (1e-3 and 0.001) or share one folder name would train one folder twice."""
    by_config: dict[str, str] = {}
    names = [name for name, _ in configs]
    for name, config in configs:
        earlier = by_config.setdefault(repr(config), name)
        if earlier != name:
            raise FacetlError(f"--grid: points {earlier} and {name} are the same run; give each value once")
        if names.count(name) > 1:
            raise FacetlError(f"--grid: two points would share the folder {name}; give values that differ in name")
