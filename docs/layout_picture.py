"""docs/layout.png: facetl's tiers as import-linter keeps them, drawn from pyproject.toml's first contract.

    .venv/bin/python docs/layout_picture.py

Each row is a tier (a layers contract entry), top to bottom in the order imports may go; rooms in a row joined
by `|` must not import each other, rooms joined by `:` may import each other.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiers() -> list[list[str]]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers" and "containers" not in c)["layers"]
    return [[room.strip().removeprefix("facetl.") for room in layer.replace("|", ":").split(":")] for layer in layers]


def main() -> None:
    rows = tiers()
    fig, ax = plt.subplots(figsize=(11, 0.9 * len(rows) + 0.6), dpi=100)
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.2, len(rows) * 0.9 + 0.2)
    ax.axis("off")
    for level, rooms in enumerate(rows):
        y = (len(rows) - 1 - level) * 0.9
        width = min(1.6, 10.6 / len(rooms) - 0.12)
        for i, room in enumerate(rooms):
            x = 0.2 + i * (width + 0.12)
            ax.add_patch(FancyBboxPatch((x, y), width, 0.55, boxstyle="round,pad=0.02", fc="#e8eef7", ec="#4a6fa5"))
            ax.text(x + width / 2, y + 0.27, room, ha="center", va="center", fontsize=7 if len(rooms) > 8 else 10)
        if level < len(rows) - 1:
            ax.annotate("", xy=(10.75, y - 0.3), xytext=(10.75, y), arrowprops={"arrowstyle": "->", "color": "#888"})
    ax.set_title("facetl's tiers: a room imports only rooms in the rows below it (import-linter, pyproject.toml)",
                 fontsize=10)
    fig.savefig(ROOT / "docs" / "layout.png", bbox_inches="tight")
    print(f"wrote {ROOT / 'docs' / 'layout.png'}")


if __name__ == "__main__":
    main()
