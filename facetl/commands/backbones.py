"""`facetl backbones`: the backbones there are, the packaged face weights with where they come from, and
`--fetch NAME|all` to get those weights into the cache."""
from __future__ import annotations

from pathlib import Path

from facetl.models.factory import list_backbones
from facetl.models.packaged import PACKAGED, cached_path, fetch, fetch_command, packaged


def backbones_listing(cache_dir: str | Path | None = None) -> str:
    """Every built-in backbone, then one block per packaged weights: the input they expect, their source and
    licence, and whether this machine has them."""
    lines = ["backbones: " + ", ".join(list_backbones()) + "; and any timm model name (--timm PATTERN)", "",
             "packaged face weights (--backbone BACKBONE --weights NAME):"]
    for weights in PACKAGED.values():
        path = cached_path(weights, cache_dir)
        here = f"cached in {path.parent}" if path.is_file() else f"not fetched: {fetch_command(weights.name)}"
        lines += [f"  {weights.name}: backbone {weights.backbone}, input {weights.input_size}x{weights.input_size} "
                  f"{weights.colour}, framing {weights.framing}",
                  f"    from the PyPI package {weights.package} {weights.version} ({Path(weights.member).name}), "
                  f"licence {weights.licence}",
                  f"    sha256 {weights.sha256}",
                  f"    trained on {weights.trained_on}; {here}"]
    return "\n".join(lines)


def fetch_weights(name: str, cache_dir: str | Path | None = None, log=print) -> list[Path]:
    """`--fetch NAME` or `--fetch all`: each pinned file checked and published in the cache."""
    names = list(PACKAGED) if name == "all" else [packaged(name).name]
    paths = []
    for each in names:
        path = fetch(each, cache_dir)
        log(f"{each}: {path} (sha256 checked)")
        paths.append(path)
    return paths
