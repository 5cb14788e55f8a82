from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.worker import Worker
from tests.testsupport.faultproxy import FaultProxy
from tests.worker import jobs


async def eventually(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (sync) until truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def _reset_gates() -> None:
    jobs.gates.clear()
    jobs.seen.clear()
    jobs.starts.clear()
    jobs.running.update(now=0, max=0)


@pytest.fixture
async def start_worker(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[tuple[Worker, asyncio.Task[None]]]]]:
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**kw: Any) -> tuple[Worker, asyncio.Task[None]]:
        kw.setdefault("queues", ("default",))
        kw.setdefault("redis_url", redis_url)
        kw.setdefault("maintenance_interval", 3600)
        worker = Worker(WorkerConfig(**kw))
        task = asyncio.create_task(worker.run())
        started.append((worker, task))
        return worker, task

    yield start
    for worker, task in started:
        worker.request_cold_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)



@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of this test's Redis (``proxy.url()`` for the worker)."""
    parsed = urlparse(redis_url)
    with FaultProxy(parsed.hostname or "127.0.0.1", parsed.port or 6379) as p:
        yield p
