"""`facetl classes RUN`: the class names a run predicts, one a line (a demonstration that a command is one file)."""
from __future__ import annotations

from pathlib import Path

from facetl.flags import add_run
from facetl.runreader import read_record

NAME = "classes"
SUMMARY = "the class names a run predicts"
EXAMPLES = [("facetl classes runs/smile", "negatives, positives")]


def add_arguments(parser) -> None:
    add_run(parser)


def run(args) -> int:
    print("\n".join(read_record(Path(args.run)).class_names))
    return 0
