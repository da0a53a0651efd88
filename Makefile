# One command each: `make demo` runs the example data-prep flow, `make test` the whole suite on the newest
# Prefect we support. Both create the virtualenv (.venv) first if it is missing or pyproject.toml changed.
# `make test-prefect-matrix` (what CI runs) also runs the suite on the oldest supported Prefect minor,
# in its own virtualenv (.venv-prefect-oldest, pins in ci/prefect-oldest.txt).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
OLD_VENV  ?= .venv-prefect-oldest
OLD_PY     = $(OLD_VENV)/bin/python
OLD_STAMP  = $(OLD_VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: chromium demo test test-prefect-oldest test-prefect-matrix bench cluster cluster-stop cluster-clean scale-test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,dask,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) flows/data_prep.py

# Debian's chromium for the channel's browser test only (idempotent; skipped with a reason where it cannot install).
chromium:
	bash ci/install-chromium.sh

test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

$(OLD_STAMP): pyproject.toml ci/prefect-oldest.txt
	test -x $(OLD_PY) || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_PY) -m pip install -q --upgrade pip
	$(OLD_PY) -m pip install -q -c ci/prefect-oldest.txt -e ".[test,dask,bench]"
	$(OLD_PY) -c "import prefect, sys; v = prefect.__version__; print('oldest Prefect:', v); sys.exit(not v.startswith('3.6.'))"
	touch $(OLD_STAMP)

# The suite on the oldest supported Prefect minor (3.6), without the multi-process scenarios marked `slow`
# (Ray, Dask, served deployments, the browser, the cluster): they run on the newest Prefect in `make test`,
# and running them twice would take CI past its time budget. `make test-prefect-oldest OLDEST_MARKS=` runs all.
OLDEST_MARKS ?= not slow
test-prefect-oldest: $(OLD_STAMP)
	$(OLD_PY) -m pytest -q -p no:cacheprovider $(if $(OLDEST_MARKS),-m "$(OLDEST_MARKS)") $(PYTEST_ARGS)

# Newest and oldest, one after the other (CI).
test-prefect-matrix: test test-prefect-oldest

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(OLD_VENV) .aether bench/results

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
