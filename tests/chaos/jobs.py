"""The functions the chaos suite enqueues; asyncjobs workers and stock ``rq worker`` import them.

Every execution appends ``B`` to the ledger when it begins and ``E`` as the last
thing before it returns (its side effect), or ``X`` before a planned failure, so
the number of runs and of side effects per job is counted outside the worker.

``fail_first`` makes a job deterministic under retries: attempt ``a`` (0 for the
first run, ``max_retries - retries_left`` after) raises while ``a < fail_first``.
A retry consumed by RQ's abandoned-job maintenance advances the attempt too, so
the expected outcome depends only on what RQ recorded.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import weakref
from typing import Any

from tests.chaos import ledger

SIDE_ENV = "CHAOS_SIDE_URL"  # a Redis that no fault touches: async jobs await round trips on it


class PlannedFailure(Exception):
    """Raised on purpose by a job whose attempt is below its ``fail_first``."""


class ProbeTimeout(Exception):
    """A slot probe did not see all its peers running at once: a slot or a thread is lost."""


def _attempt(max_retries: int) -> int:
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("chaos job run outside a worker: rq.get_current_job() is None")
    left = job.retries_left
    return max_retries - left if (max_retries and left is not None) else 0


def _maybe_fail(key: str, token: str, fail_first: int, max_retries: int) -> None:
    attempt = _attempt(max_retries)
    if attempt < fail_first:
        ledger.write("X", key, token)
        raise PlannedFailure(f"planned failure of {key} on attempt {attempt} (fails the first {fail_first})")


LEAK_ENV = "CHAOS_LEAK_KB"  # the recycle scenario: every job keeps this much memory alive for good
_leaked: list[bytearray] = []


def _leak() -> None:
    kb = int(os.environ.get(LEAK_ENV) or 0)
    if kb:
        block = bytearray(kb * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touched: resident, not just reserved
        _leaked.append(block)


def sync_work(key: str, seconds: float, fail_first: int = 0, max_retries: int = 0) -> str:
    token = uuid.uuid4().hex
    ledger.write("B", key, token)
    _leak()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.02))  # short slices: an exception injected into this thread lands soon
    _maybe_fail(key, token, fail_first, max_retries)
    ledger.write("E", key, token)
    return token


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _side_async() -> Any:
    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        url = os.environ.get(SIDE_ENV)
        if not url:
            raise RuntimeError(f"${SIDE_ENV} is not set: the chaos harness passes the side Redis URL")
        client = redis.asyncio.Redis.from_url(url)
        _async_clients[loop] = client
    return client


async def async_work(key: str, seconds: float, fail_first: int = 0, max_retries: int = 0, ping: bool = False) -> str:
    """With ``ping``, the job spends its time awaiting Redis round trips (redis-py wraps each in a
    socket-timeout ``wait_for``), where a cancel is most likely to land as an await completes."""
    token = uuid.uuid4().hex
    ledger.write("B", key, token)
    _leak()
    deadline = time.monotonic() + seconds
    if ping:
        side = _side_async()
        while time.monotonic() < deadline:
            await side.ping()
            await asyncio.sleep(0.002)
    else:
        await asyncio.sleep(seconds)
    _maybe_fail(key, token, fail_first, max_retries)
    ledger.write("E", key, token)
    return token


_sync_client: tuple[int, Any] | None = None


def _side_sync() -> Any:
    global _sync_client
    import redis

    if _sync_client is None or _sync_client[0] != os.getpid():
        url = os.environ.get(SIDE_ENV)
        if not url:
            raise RuntimeError(f"${SIDE_ENV} is not set: the chaos harness passes the side Redis URL")
        _sync_client = (os.getpid(), redis.Redis.from_url(url))
    return _sync_client[1]


PROBE_WAIT = 60.0


def sync_probe(key: str, barrier: str, n: int) -> str:
    """Count in, then wait until ``n`` probes run at the same time (every slot and thread free)."""
    token = uuid.uuid4().hex
    ledger.write("B", key, token)
    side = _side_sync()
    side.incr(barrier)
    deadline = time.monotonic() + PROBE_WAIT
    while int(side.get(barrier) or 0) < n:
        if time.monotonic() > deadline:
            raise ProbeTimeout(f"only {int(side.get(barrier) or 0)} of {n} probes ran at once after {PROBE_WAIT:.0f}s")
        time.sleep(0.02)
    ledger.write("E", key, token)
    return token


async def async_probe(key: str, barrier: str, n: int) -> str:
    token = uuid.uuid4().hex
    ledger.write("B", key, token)
    side = _side_async()
    await side.incr(barrier)
    deadline = time.monotonic() + PROBE_WAIT
    while int(await side.get(barrier) or 0) < n:
        if time.monotonic() > deadline:
            raise ProbeTimeout(f"only {int(await side.get(barrier) or 0)} of {n} probes ran at once after {PROBE_WAIT:.0f}s")
        await asyncio.sleep(0.02)
    ledger.write("E", key, token)
    return token


def exit_now(code: int) -> None:
    """A hostile entry of the ``hostile`` scenario: what argparse/click do on bad input (no ledger line)."""
    raise SystemExit(code)


async def interrupt_now() -> None:
    """A hostile entry of the ``hostile`` scenario: KeyboardInterrupt from an async job (no ledger line)."""
    raise KeyboardInterrupt
