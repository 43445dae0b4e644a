"""`facetl runs DIR`: every run folder under DIR as one table, sortable by any metric (facetl.experiments.runs),
and the best run named by the metric that chose it."""
from __future__ import annotations

import sys
from pathlib import Path

from facetl.experiments.runs import best_line, check_table_out, runs_table, text_table, write_table
from facetl.flags import add_out, add_overwrite
from facetl.outputs import refuse_misplaced

NAME = "runs"
SUMMARY = "every run folder under a folder as one table, sortable by any metric"
EXAMPLES = [("facetl runs runs/", "every run under runs/ as one table"),
            ("facetl runs runs/study4 --sort roc_auc --out study4.md", "best ROC-AUC first, as a markdown table")]


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a folder searched for run folders (sweeps, folds, tune studies)")
    parser.add_argument("--sort", metavar="COLUMN", help="sort by this column, best first: descending for scores, "
                                                         "ascending for losses and seconds (default: by path)")
    add_out(parser, "write the table to FILE.csv or FILE.md instead of printing it", metavar="FILE")
    add_overwrite(parser, "--out if it exists")


def run(args) -> int:
    out = Path(args.out) if args.out else None
    if out is not None:
        refuse_misplaced(out, "--out")  # a table beside the runs, never inside one: a run's folder is its own
        check_table_out(out, args.overwrite)
    rows = runs_table(args.dir, args.sort)
    if out is None:
        print(text_table(rows), end="")
    else:
        write_table(rows, out)
        print(f"wrote {len(rows)} runs to {out}")
    print(best_line(rows, args.sort), file=sys.stderr)  # the table alone on stdout, for pipes
    return 0
