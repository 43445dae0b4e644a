"""The documentation a newcomer meets: a short README whose links land on real pages of the site, and a
command reference that lists every facetl command (built by the same function as the site's mkdocs hook)."""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

from markdown.extensions.toc import slugify

from facetl.cli import build_parser

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
DOCS = REPOSITORY / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def reference_hook():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anchors(page: Path) -> set[str]:
    """The ids mkdocs gives a page's headings (Python-Markdown's toc slugs; code marks dropped)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slugify(m.group(1).replace("`", ""), "-") for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readme_is_a_front_door_not_a_lab_notebook():
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; measurements and details belong in docs/"
    assert "make demo" in README.read_text() and "make test" in README.read_text()


def test_every_readme_link_lands_on_a_docs_page_and_heading_that_exist():
    links = [link for link in LINK.findall(README.read_text()) if not link.startswith(("http://", "https://"))]
    assert links, "README.md links to no docs page"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (REPOSITORY / path).resolve()
        assert target.is_relative_to(DOCS) and target.is_file(), f"README.md links to {link}: not a docs page"
        if anchor:
            assert anchor in anchors(target), f"README.md links to {link}: {path} has no such heading"


def test_the_reference_has_every_command_with_its_whole_help():
    page = reference_hook().reference_markdown()
    (commands,) = [a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.items():
        assert f"## facetl {name}\n" in page, f"facetl {name} is missing from the command reference"
        section = page.split(f"## facetl {name}\n", 1)[1].split("\n## ", 1)[0]
        options = {o for a in command._actions if a.help != argparse.SUPPRESS  # hidden: internal or renamed
                   for o in a.option_strings if o.startswith("--")}
        missing = sorted(o for o in options if o not in section)
        assert not missing, f"facetl {name}'s options missing from its reference section: {missing}"
        assert "examples:" in section, f"facetl {name}'s reference section lacks the examples its --help ends with"
