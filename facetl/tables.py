"""Every table facetl writes, as CSV, as markdown or as aligned text for a terminal: one writer for all three.

A table is a header (column names) and rows (lists of cells, one per column). CSV cells are made
spreadsheet-safe (`spreadsheet_cell`); markdown cells have their `|` escaped, so a cell never splits a row;
`None` is an empty cell in every form.
"""
from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence

from facetl.config import is_number

# A cell starting with one of these is a formula to a spreadsheet (`=cmd|' /C calc'!A0` runs a program).
# OWASP's advice: prefix such text with a single quote, which spreadsheets show but do not evaluate.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value):
    """A CSV cell no spreadsheet will run: text (not a number) starting a formula gets a leading quote; text
    already starting with a quote and such a character, or two quotes, gets one more, so `plain_cell` undoes it."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(FORMULA_START) and not is_number(value):
        return "'" + value
    if value[0] == "'" and value[1:2] and value[1:2] in (*FORMULA_START, "'"):
        return "'" + value
    return value


def plain_cell(text: str) -> str:
    """A cell as written before `spreadsheet_cell` (for facetl's own CSVs read back: tables, split.csv)."""
    if text[:1] == "'" and text[1:2] and text[1:2] in (*FORMULA_START, "'"):
        return text[1:]
    return text


def csv_text(header: Sequence | None, rows: Iterable[Sequence]) -> str:
    """Every CSV facetl writes goes through here: spreadsheet-safe cells, one line ending (header None: rows
    to append to a file that has one)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow([spreadsheet_cell(c) for c in header])
    writer.writerows([spreadsheet_cell(c) for c in row] for row in rows)
    return buffer.getvalue()


def _markdown_cell(value) -> str:
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_row(cells: Sequence) -> str:
    """One row of a markdown table: `| a | b |`."""
    return "| " + " | ".join(_markdown_cell(c) for c in cells) + " |"


def markdown_table(header: Sequence, rows: Iterable[Sequence]) -> list[str]:
    """Every markdown table facetl writes goes through here: its lines (header, rule, rows), without a blank line
    around them, so a report can put it among its other lines."""
    return [markdown_row(header), "|" + "---|" * len(header)] + [markdown_row(row) for row in rows]


def aligned_text(header: Sequence, rows: Iterable[Sequence]) -> str:
    """The table for a terminal: columns padded to their widest cell, two spaces apart."""
    lines = [[_plain(c) for c in line] for line in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def _plain(value) -> str:
    return "" if value is None else str(value)


TABLE_SUFFIXES = (".csv", ".md")


def table_text(suffix: str, header: Sequence, rows: Iterable[Sequence]) -> str:
    """The table as a file of that kind: `.md` markdown, `.csv` CSV (TABLE_SUFFIXES)."""
    if suffix.lower() == ".md":
        return "\n".join(markdown_table(header, rows)) + "\n"
    if suffix.lower() == ".csv":
        return csv_text(header, rows)
    raise ValueError(f"a table is written as {' or '.join(TABLE_SUFFIXES)}, not {suffix!r}")
