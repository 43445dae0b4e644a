"""One module per command: `facetl export` is export.py, `facetl lr-find` lr_find.py. Each declares

    NAME = "export"                          # the command word
    SUMMARY = "one line for facetl --help"
    EXAMPLES = [("facetl export runs/smile", "why"), ...]   # the end of its --help, also shown in README or docs/
    INTERRUPTED = "what is kept on Ctrl-C"   # optional
    def add_arguments(parser) -> None        # shared flags from facetl/flags.py, argument groups for --help
    def run(args) -> int                     # FacetlError for bad input: one line, exit 2

and is listed in cli.py's MODULES. A command module imports no other command module; what several share lives
in facetl/flags.py (flags) or the library."""
