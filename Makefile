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

# The scale-out topology on this machine (PostgreSQL, Prefect server, moto S3, 2 process workers), data in .cluster/.
cluster: $(STAMP)
	$(PY) -m scale.cluster start

cluster-stop: $(STAMP)
	$(PY) -m scale.cluster stop

cluster-clean: $(STAMP)
	$(PY) -m scale.cluster clean

# Starts the cluster if needed, runs the load + fault scenario, prints the figures; non-zero exit if a promise fails.
scale-test: $(STAMP)
	$(PY) -m scale.scenario
