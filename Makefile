# One command each: `make demo` runs the example data-prep flow, `make test` the whole suite.
# Both create the virtualenv (.venv) first if it is missing or pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: demo test bench cluster cluster-stop cluster-clean scale-test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,dask,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) flows/data_prep.py

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .aether bench/results
