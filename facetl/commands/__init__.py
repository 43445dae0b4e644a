"""What each command does, one module named after it: `facetl faces` is faces.py, `facetl inspect` inspect.py,
and so on (`facetl train` is the train package, `facetl serve` the serve package). cli.py only parses the
command line and calls these."""
