"""`facetl cache`: what facetl's caches (decoded images, frozen features, fetched weights) hold, and clearing them."""
from __future__ import annotations

from facetl.flags import add_cache_dir

NAME = "cache"
SUMMARY = "list or clear facetl's caches"
EXAMPLES = [("facetl cache ls", "what is cached and how large"), ("facetl cache clear", "free the disk")]


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["ls", "clear"], help="ls: list complete entries and sizes; clear: delete all")
    add_cache_dir(parser)


def run(args) -> int:
    from facetl.data.integrity import CACHE_KINDS, cache_entries, clear_cache, remove_stale_builds
    from facetl.data.store import cache_root

    root = cache_root(args.cache_dir)
    if args.action == "clear":
        print(f"cleared {clear_cache(root)} cache entries in {root}")
        return 0
    for kind in CACHE_KINDS:
        remove_stale_builds(root / kind)  # left by killed runs
    total = 0
    entries = cache_entries(root)
    for entry in entries:
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        total += size
        print(f"{entry.parent.name:<9} {entry.name:<28} {size / 2**20:>10.1f} MiB")
    print(f"{len(entries)} entries, {total / 2**20:.1f} MiB in {root}")
    return 0
