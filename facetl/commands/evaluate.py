"""`facetl evaluate RUN`: the best checkpoint of a run on one of its splits, on this machine."""
from __future__ import annotations

from facetl.evaluate_run import DataLocation, evaluate_run
from facetl.flags import add_data, add_run, add_runtime_flags, renamed
from facetl.inference.tta import TTA_HELP, TTA_MODES
from facetl.runtime import Runtime


NAME = "evaluate"
SUMMARY = "evaluate a run's best checkpoint on its validation or test images"
EXAMPLES = [("facetl evaluate runs/smile", "the test split: runs/smile/eval-test/report.md"),
            ("facetl evaluate runs/smile --subset val --tta flip", "the validation split, each image averaged "
                                                                  "with its mirror image")]


def add_arguments(parser) -> None:
    add_run(parser)
    subset = parser.add_argument("--subset", choices=["val", "test"], default="test",
                                 help="which part of the run's split (default test)")
    renamed(parser, "--split", subset)  # --split is train's fractions
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP + " (default none)")
    parser.add_argument("--groups", metavar="GROUPS", help="metrics per group too: a table column or path:REGEX "
                                                           "(default: the run's --groups, if any)")
    data = parser.add_argument_group("data (when it moved since training)")
    add_data(data, target=False, help="the data, when it is no longer where the run recorded it")
    data.add_argument("--allow-changed-data", action="store_true",
                      help="evaluate even if data files changed since the split was made")
    add_runtime_flags(parser)


def run(args) -> int:
    metrics, out = evaluate_run(args.run, args.subset, Runtime.for_inference(args.device, args.precision), True,
                                DataLocation(args.data, args.images, args.allow_changed_data), args.tta, args.groups)
    tta = "" if args.tta == "none" else f" (tta {args.tta})"
    if metrics.get("attributes"):  # a multi-attribute run: the per-attribute table, its last row the means
        from facetl.evaluate.report import attribute_table

        print(f"{args.subset}{tta}: {metrics['n_images']} images, {len(metrics['attributes'])} attributes")
        print("\n".join(attribute_table(metrics)))
        print(f"report: {out / 'report.md'}")
        return 0
    from facetl.evaluate.metrics import metric_line

    print(f"{args.subset}{tta}: {metric_line(metrics)}  ({metrics['n_images']} images)")
    print(f"report: {out / 'report.md'}")
    return 0
