"""Fixtures for the interoperability suite: worker kinds and a worker launcher.

``kind`` parametrizes a test over the worker under test:

* ``stock``: ``rq worker -w rq.worker.SimpleWorker`` (stock RQ 2.12.0), the reference;
* ``asyncjobs``: the ``asyncjobs-worker`` console script.

Tests enqueue with stock RQ and check outcomes through RQ's own APIs, so the
same assertions must hold for both kinds (differential testing).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compat.support import STOCK, Launcher, WorkerKind
from tests.testsupport.workers import asyncjobs_worker_available

_ASYNCJOBS_OK: bool | None = None


def _require_asyncjobs() -> None:
    global _ASYNCJOBS_OK
    if _ASYNCJOBS_OK is None:
        _ASYNCJOBS_OK = asyncjobs_worker_available()
    if not _ASYNCJOBS_OK:
        pytest.fail("`asyncjobs-worker --help` does not run: the asyncjobs worker CLI is missing or broken")


@pytest.fixture(params=["stock", "asyncjobs"])
def kind(request: pytest.FixtureRequest) -> WorkerKind:
    if request.param == "asyncjobs":
        _require_asyncjobs()
    return WorkerKind(request.param)


@pytest.fixture
def asyncjobs_kind() -> WorkerKind:
    """For asyncjobs-only scenarios (the stock worker cannot do them)."""
    _require_asyncjobs()
    return WorkerKind("asyncjobs")


@pytest.fixture
def stock_kind() -> WorkerKind:
    return WorkerKind(STOCK)


@pytest.fixture
def launcher(redis_url: str) -> Iterator[Launcher]:
    """Starts workers for the test and kills any still running at teardown (by PID)."""
    launch = Launcher(redis_url)
    try:
        yield launch
    finally:
        launch.close()
