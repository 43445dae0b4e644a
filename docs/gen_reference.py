"""The command reference, built from the facetl parser's own help: an mkdocs hook (mkdocs.yml `hooks:`).

Every `mkdocs build` writes reference.md afresh from `facetl.cli.build_parser()`, so the page cannot fall behind
the command line. Nothing here needs network or weights: building the parser only imports facetl.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PAGE = "reference.md"
WIDTH = "100"  # argparse wraps help to $COLUMNS; a fixed width keeps the page the same on every machine

INTRO = """# Command reference

Generated from the command line's own `--help` when the site is built (`docs/gen_reference.py`), so it
lists every command and option as this version of facetl has them. Each command's help ends with
examples that work from the repository root; the [guides](index.md#guides) explain when to use which.
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The `facetl COMMAND` parsers, in the order `facetl --help` lists them."""
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@contextmanager
def fixed_width():
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def reference_markdown() -> str:
    """One page: `facetl --help`, then a section per command with its full help."""
    if str(REPOSITORY) not in sys.path:  # document this source tree, whatever else is installed
        sys.path.insert(0, str(REPOSITORY))
    from facetl.cli import build_parser

    parser = build_parser()
    commands = subcommands(parser)
    with fixed_width():
        sections = [INTRO, "## facetl\n", "```text\n" + parser.format_help().rstrip() + "\n```\n",
                    "Commands: " + ", ".join(f"[{name}](#facetl-{name})" for name in commands) + ".\n"]
        for name, command in commands.items():
            sections += [f"## facetl {name}\n", "```text\n" + command.format_help().rstrip() + "\n```\n"]
    return "\n".join(sections)


def on_files(files, config):
    """mkdocs hook: add the generated page to the site (it is never written into docs/)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
