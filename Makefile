# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv when missing.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/facetl demo

# the import layers in pyproject.toml first (seconds), then the tests
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# also the slow end-to-end cases (kill and resume, torchrun resume, fresh-process bad input)
test-all: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf runs .pytest_cache
