# fastsoftmax: every target sets up what it needs (a virtual environment in .venv with the
# package installed from this checkout), so each works on a fresh machine with Python and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install install-torch install-jax test test-slow coverage bench bench-full bench-dask clean

help: ## show the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install fastsoftmax with its test and bench extras

install-torch: install ## add PyTorch 2.13 (CPU build) as a benchmark peer
	$(BIN)/python -m pip install --quiet torch==2.13.0

install-jax: install ## add JAX (CPU) as a benchmark peer and for the interop tests
	$(BIN)/python -m pip install --quiet 'jax>=0.4'

test: install ## run the test suite (benchmarks run once each, untimed, as smoke tests)
	$(BIN)/python -m pytest -m "not slow"

test-slow: install ## run the whole suite, the slow tests too
	$(BIN)/python -m pytest

coverage: install ## tests without the JIT (kernel bodies run as Python) under coverage; report
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m coverage run --source=fastsoftmax -m pytest -q tests -m "not slow"
	$(BIN)/python -m coverage report --show-missing

bench: install ## quick benchmark against the reference and installed peers, with a chart
	$(BIN)/python -m fastsoftmax bench --quick --startup --plot benchmarks/latest.png --json benchmarks/latest.json

bench-full: install ## timed pytest-benchmark suite on every SPEC shape; JSON saved in .benchmarks/
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-autosave \
		--benchmark-storage=.benchmarks --benchmark-columns=min,median,rounds \
		--benchmark-group-by=group --benchmark-sort=min

bench-dask: install ## fastsoftmax.dask on a 2-worker LocalCluster vs in memory (8192x128256)
	$(BIN)/python benchmarks/bench_dask.py

clean: ## remove the environment, caches and build files
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks build dist *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
