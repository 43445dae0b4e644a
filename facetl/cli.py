"""The `facetl` command: a table of the commands, each one module of facetl/commands/ that declares its own
arguments and runs them (NAME, SUMMARY, EXAMPLES, optional INTERRUPTED, add_arguments(parser), run(args)).
Only the module of the command given is imported. Bad input ends in one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
from importlib.metadata import PackageNotFoundError, version
import sys
import warnings

from facetl.errors import FacetlError
from facetl.flags import HelpFormatter, Parser, examples_epilog
from facetl.runtime.signals import terminate_as_interrupt

# The commands, in `facetl --help`'s order: facetl/commands/<module>.py each (lr_find.py is `facetl lr-find`).
MODULES = ("train", "lr_find", "sweep", "tune", "runs", "evaluate", "predict", "explain", "faces", "inspect", "cache",
           "backbones", "export", "demo", "serve")


def command_module(name: str):
    return importlib.import_module("facetl.commands." + name.replace("-", "_"))


def command_word(argv: list[str]) -> str | None:
    """The command given; "" when there is none and no help is asked for (--version): no command is imported."""
    word = next((word for word in argv if not word.startswith("-")), None)
    return word if word is not None or not argv or {"-h", "--help"} & set(argv) else ""


def installed_version() -> str:
    try:
        return version("facetl")
    except PackageNotFoundError:  # `python -m facetl` from a source tree on PYTHONPATH: every command still runs
        return "(not installed: run from its source tree)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or, with `only`, that command's whole and the others' names only (no imports)."""
    parser = Parser(prog="facetl", description="Transfer learning of face classifiers.", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"facetl {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in MODULES:
        if only in (None, name.replace("_", "-")):
            add_command(sub, command_module(name))
        else:
            sub.add_parser(name.replace("_", "-"))
    return parser


def add_command(sub, module) -> argparse.ArgumentParser:
    parser = sub.add_parser(module.NAME, help=module.SUMMARY, description=module.SUMMARY,
                            epilog=examples_epilog(module.EXAMPLES), formatter_class=HelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(command_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_word(argv))
    args = parser.parse_args(argv)
    args.argv = argv
    if not args.command:
        parser.print_help()
        return 2
    module = args.command_module
    kept = getattr(module, "INTERRUPTED", None)
    try:
        with terminate_as_interrupt():  # scancel, a time limit, `kill`: each command stops as on Ctrl-C
            return module.run(args) or 0
    except FacetlError as exc:
        print(f"facetl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facetl {args.command}: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 130
    except MemoryError:
        print(f"facetl {args.command}: error: out of memory; try a smaller --batch-size or --img-size",
              file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"facetl {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
