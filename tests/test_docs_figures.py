"""Docs written for users: every measured figure lives on docs/benchmarks.md, beside the command, machine and date
that made it; the other pages link to it. No page carries development history, and the home page lists every
guide and every command.

A *figure* here is a number written as a measurement in prose or in a table (code is left out: commands, their
printed output and formulas in `inline code` are examples, not claims):
  - a percentage (`84 %`, `98.7%`),
  - a rate (`16.5 answers a second`, `59.2 frames/s`, `13 photos/s`, `3.79 requests/s`, `25 fps`),
  - a duration measured in minutes or milliseconds (`4 min 35 s`, `14 minutes`, `40.5 ms`) or with a decimal
    point (`1.2 s`),
  - an accuracy-like fraction with three or more decimals (`0.921`), or with two next to a metric's name
    (`0.87-0.91 accuracy`, `ROC-AUC 0.94`).
A page other than benchmarks.md may quote one only if benchmarks.md holds the same number.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from facetl.cli import build_parser

REPOSITORY = Path(__file__).resolve().parents[1]
DOCS = REPOSITORY / "docs"
BENCHMARKS = DOCS / "benchmarks.md"
GUIDES = sorted(p for p in DOCS.glob("*.md") if p.name != "benchmarks.md")

NUMBER = r"\d[\d,]*(?:\.\d+)?"
METRIC = r"(?:accuracy|balanced|ROC-AUC|AUC|F1|precision|recall)"
RATE = (r"answers a second|answers/s|frames a second|frames/s|fps|photos/s|images/s|img/s|requests/s|photos a second"
        r"|images a second|(?:label )?flips per track per minute|per track per minute")
FIGURE = re.compile(
    rf"(?P<percent>{NUMBER}) ?%"
    rf"|(?P<rate>{NUMBER}) ?(?:{RATE})\b"
    rf"|(?P<minutes>{NUMBER} ?(?:min|minutes)\b(?: \d+ s\b)?)"
    rf"|(?P<ms>{NUMBER}) ?ms\b"
    rf"|(?P<seconds>\d+\.\d+) s\b"
    rf"|(?<![\d.])(?P<fraction>0\.\d{{3,}})"
    rf"|(?<![\d.])(?P<near_metric>0\.\d{{2}})(?=[^\n;]{{0,25}}\b{METRIC})"
    rf"|(?:{METRIC}) (?P<after_metric>0\.\d{{2}})\b")
# issue and pull-request numbers, the sessions and lent machines of development, renovations, commits on main
HISTORY = re.compile(r"\bissues? #?\d+|(?<![\w&])#\d+\b|\bPR #?\d+|(?<!login )\bsessions?\b|\blent\b"
                     r"|\brenovation\b|\bmain at\b", re.I)
HASH = re.compile(r"`[0-9a-f]{7,40}`")


def prose(text: str) -> str:
    """The page without its code: fenced blocks, indented blocks, inline code spans and link targets."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"^(?: {4}|\t).*$", "", text, flags=re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return joined(re.sub(r"\]\([^)]*\)", "]", text))


def joined(text: str) -> str:
    """Each paragraph on one line, so that a figure broken over two lines is still one."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def figures(text: str) -> list[tuple[str, str, str]]:
    """(the figure as written, its kind, its number) for every figure of `text`."""
    found = []
    for match in FIGURE.finditer(text):
        kind, value = next((k, v) for k, v in match.groupdict().items() if v)
        if kind == "minutes":
            value = ":".join(re.findall(r"\d+", value))
        kind = "fraction" if kind in ("near_metric", "after_metric") else kind
        found.append((match.group(0), kind, value.replace(",", "")))
    return found


def held_by_benchmarks() -> set[tuple[str, str]]:
    """What benchmarks.md measured: its figures with their units (code included: its commands' printed results
    count), and any number with a decimal point as a figure of any kind (table cells carry their unit in the
    column's header)."""
    text = joined(BENCHMARKS.read_text())
    held = {(kind, number) for _, kind, number in figures(text)}
    decimals = {n.replace(",", "") for n in re.findall(NUMBER, text) if "." in n}
    kinds = ("percent", "rate", "minutes", "ms", "seconds", "fraction")
    return held | {(kind, number) for number in decimals for kind in kinds}


def test_the_figure_rule_finds_measurements_and_leaves_settings_and_code_alone():
    page = ("It runs at 16.5 answers a second (84 % accuracy, 0.921 test accuracy, 0.87-0.91 accuracy, ROC-AUC 0.94)"
            " in 4 min 35 s, 40.5 ms a frame, 59.2 frames/s.\n"
            "Killed 30 s later; threshold 0.5; weight decay 0.05; `0.5 x ln 2 = 0.35` s; `--ema 0.999`.\n"
            "```sh\nfacetl evaluate runs/smile   # accuracy 0.930, 93.0%\n```\n"
            "    indented output: 0.777 and 12%\n"
            "Label flips from about 35 per track per minute to none; 7-13 answers a\nsecond.\n")
    assert [(k, n) for _, k, n in figures(prose(page))] == [
        ("rate", "16.5"), ("percent", "84"), ("fraction", "0.921"), ("fraction", "0.87"), ("fraction", "0.91"),
        ("fraction", "0.94"), ("minutes", "4:35"), ("ms", "40.5"), ("rate", "59.2"), ("rate", "35"), ("rate", "13")]


@pytest.mark.parametrize("page", GUIDES + [REPOSITORY / "README.md"], ids=lambda p: p.name)
def test_a_page_quotes_only_figures_that_benchmarks_md_holds(page):
    held = held_by_benchmarks()
    stray = [written for written, kind, number in figures(prose(page.read_text())) if (kind, number) not in held]
    assert not stray, (f"{page.name} quotes figures that docs/benchmarks.md does not hold: {stray}; put the "
                       "measurement on benchmarks.md (with its command, machine and date) and link to it")


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")) + [REPOSITORY / "README.md"], ids=lambda p: p.name)
def test_no_page_tells_development_history(page):
    text = page.read_text()
    told = [m.group(0) for m in HISTORY.finditer(prose(text))] + HASH.findall(text)
    assert not told, f"{page.name} tells development history (issue numbers, commits, sessions): {told}"


def test_every_benchmark_section_says_its_command_machine_and_date():
    sections = re.split(r"^## ", BENCHMARKS.read_text(), flags=re.M)[1:]
    for section in sections:
        title = section.splitlines()[0]
        if not figures(section):  # a section that describes a script whose figures are still to come
            continue
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", section), f"benchmarks.md '{title}' gives no date"
        assert re.search(r"CPU|GPU|H100|H200", section), f"benchmarks.md '{title}' does not say on what machine"
        assert "facetl " in section or "benchmarks/" in section, f"benchmarks.md '{title}' gives no command"


def test_the_home_page_lists_every_guide_and_every_command():
    home = (DOCS / "index.md").read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"]({page.name}" in home, f"docs/index.md does not list {page.name}"
    assert "](reference.md" in home
    (commands,) = [a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name in commands:
        assert re.search(rf"^facetl {re.escape(name)}\b", home, flags=re.M), \
            f"docs/index.md's command list lacks facetl {name}"


@pytest.mark.parametrize("study", ["study 1", "study 2", "study 3", "study 4"])
def test_each_study_is_defined_where_it_is_first_named(study):
    """The first time a page names "study N", the same paragraph says what it is (task, network, data)."""
    for page in sorted(DOCS.glob("*.md")) + [REPOSITORY / "README.md"]:
        text = page.read_text()
        paragraphs = re.split(r"\n\s*\n", text)
        first = next((p for p in paragraphs if re.search(rf"\b{study}\b", p, flags=re.I)), None)
        if first is None:
            continue
        assert re.search(r"smil|gender|identit|celebrit", first, flags=re.I) and \
            re.search(r"VGG|MobileNet", first), f"{page.name} names {study} without saying what it is: {first[:200]!r}"


def test_every_picture_is_shown_by_a_page_and_small():
    """A picture in docs/ that no page shows is stale; one over 300 KB weighs down the repository and the site."""
    shown = set()
    for page in DOCS.glob("*.md"):
        shown |= {(DOCS / link).resolve() for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text())}
    pictures = sorted(DOCS.rglob("*.png"))
    assert pictures, "docs/ has no pictures"
    for picture in pictures:
        assert picture.resolve() in shown, f"{picture.relative_to(DOCS)} is shown by no page"
        assert picture.stat().st_size < 300 * 1024, f"{picture.relative_to(DOCS)} is over 300 KB"
    for target in shown:
        assert target.is_file(), f"a page shows {target}, which does not exist"
