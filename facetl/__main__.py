"""`python -m facetl` runs the command line (torchrun launches it this way)."""
import sys

from facetl.cli import main

sys.exit(main())
