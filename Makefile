# fastsoftmax: every target sets up what it needs (a virtual environment in .venv with the
# package installed from this checkout), so each works on a fresh machine with Python and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PEERS_STAMP := $(VENV)/.peers-stamp
# The peers the tests check semantics and gradients against. TORCH is the CPU build on this
# project's machines (a plain `pip install torch` elsewhere may fetch a multi-GB CUDA build:
# TORCH="torch --index-url https://download.pytorch.org/whl/cpu" there); TORCH= JAX= skip them.
TORCH ?= torch==2.13.0
JAX ?= jax>=0.4
# The entmax package (sparsemax and entmax for PyTorch): installed without its dependencies,
# so that it never replaces the torch above; it needs torch alone.
ENTMAX ?= entmax>=1.1

.PHONY: help install install-peers install-torch install-jax test test-slow coverage bench \
	bench-readme bench-full bench-dask clean

help: ## show the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install fastsoftmax with its test and bench extras

# --no-compile: pip would byte-compile every module of PyTorch and JAX (measured 42 s against
# 12 s for the install), of which the tests import a small part, compiled when imported.
$(PEERS_STAMP): $(STAMP)
	$(if $(strip $(TORCH)$(JAX)),$(BIN)/python -m pip install --quiet --no-compile $(TORCH) \
		$(if $(strip $(JAX)),'$(JAX)'))
	$(if $(strip $(TORCH)$(ENTMAX)),$(BIN)/python -m pip install --quiet --no-deps '$(ENTMAX)')
	touch $(PEERS_STAMP)

install-peers: $(PEERS_STAMP) ## add PyTorch (CPU), JAX and entmax: test and benchmark peers

install-torch: install ## add PyTorch 2.13 (CPU build) only
	$(BIN)/python -m pip install --quiet $(TORCH)

install-jax: install ## add JAX (CPU) only
	$(BIN)/python -m pip install --quiet '$(JAX)'

# Tests run in one process per core (pytest-xdist): most of their time is Numba compiling
# kernels, one thread each, and the kernel cache on disk is shared between the processes.
# --dist worksteal hands each worker a contiguous half of the suite, whose neighbouring tests
# share kernels (the default scheduling alternates them between workers, and each compiled
# most kernels itself: measured -25% wall, -28% CPU on the build matrix of float32).
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto

test: install-peers ## run the test suite, PyTorch and JAX included (benchmarks run once each, untimed)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist worksteal

test-slow: install-peers ## run the whole suite, the slow tests too
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

coverage: install ## tests without the JIT (kernel bodies run as Python) under coverage; report
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m coverage run --source=fastsoftmax -m pytest -q tests -m "not slow"
	$(BIN)/python -m coverage report --show-missing

bench: install-peers ## benchmark against the reference and the peers; table, JSON and chart in .benchmarks/
	mkdir -p .benchmarks
	$(BIN)/python -m fastsoftmax bench --quick --startup --plot .benchmarks/latest.png \
		--json .benchmarks/latest.json

bench-readme: install-peers ## the same, saved as benchmarks/latest.{json,png} and printed as the README's table
	$(BIN)/python -m fastsoftmax bench --quick --startup --plot benchmarks/latest.png \
		--json benchmarks/latest.json --markdown

bench-full: install-peers ## timed pytest-benchmark suite on every shape of docs/design.md; JSON saved in .benchmarks/
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-autosave \
		--benchmark-storage=.benchmarks --benchmark-columns=min,median,rounds \
		--benchmark-group-by=group --benchmark-sort=min

bench-dask: install ## fastsoftmax.dask on a 2-worker LocalCluster vs in memory (8192x128256)
	$(BIN)/python benchmarks/bench_dask.py

clean: ## remove the environment, caches and build files
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks build dist *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
