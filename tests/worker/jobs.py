"""Job functions for in-process worker tests (the worker and the test share one loop)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import asyncjobs

gates: dict[str, asyncio.Event] = {}
thread_gates: dict[str, threading.Event] = {}
seen: list[Any] = []


def gate(name: str) -> asyncio.Event:
    return gates.setdefault(name, asyncio.Event())


async def wait_gate(name: str) -> str:
    await gate(name).wait()
    return f"released {name}"


def add(a: int, b: int) -> int:
    return a + b


async def aadd(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def sleep_async(seconds: float) -> None:
    await asyncio.sleep(seconds)


def spin_sync(seconds: float) -> str:
    # Pure-Python busy loop: interruptible by an asynchronous exception.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "spun"


async def current_job_info(tag: str) -> dict[str, Any]:
    job = asyncjobs.get_current_job()
    import rq

    stock = rq.get_current_job()
    job.meta["tag"] = tag
    job.save_meta()
    await asyncio.sleep(0.01)
    # Each concurrently running job still sees itself.
    return {"id": job.id, "stock_id": stock.id if stock else None, "tag": asyncjobs.get_current_job().meta["tag"]}


def current_job_info_sync(tag: str) -> dict[str, Any]:
    import rq

    job = rq.get_current_job()
    job.meta["tag"] = tag
    job.save_meta()
    return {"id": job.id, "tag": tag}


async def ping_forever(url: str) -> None:
    """Loops on redis.asyncio round trips with a socket timeout (redis-py then wraps sends in wait_for)."""
    from redis.asyncio import Redis

    conn = Redis.from_url(url, socket_timeout=5)
    try:
        while True:
            await conn.ping()
    finally:
        await conn.aclose()


def ledger_incr(url: str, key: str) -> int:
    """Counts its own runs in Redis (directly, not through any proxy the worker uses)."""
    import redis

    conn = redis.Redis.from_url(url)
    try:
        return int(conn.incr(key))
    finally:
        conn.close()


def ledger_incr_and_fail(url: str, key: str) -> None:
    ledger_incr(url, key)
    raise RuntimeError("fails every time")


def spin_for(seconds: float) -> float:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return seconds


def always_retry(max_retries: int) -> object:
    """Returns ``Retry(max)`` every time: after ``max`` retries RQ records MAX_RETRIES_EXCEEDED."""
    from rq import Retry

    return Retry(max=max_retries)


handled: list[str] = []


def recording_handler(job: object, exc_type: type, exc_value: BaseException, tb: object) -> bool:
    """An ``--exception-handler`` that notes which job and exception it saw."""
    handled.append(f"{getattr(job, 'id', '?')}:{exc_type.__name__}")
    return True


#: (queue tag, monotonic start time) of each ``record`` call, in start order
starts: list[tuple[str, float]] = []
running: dict[str, int] = {"now": 0, "max": 0}


async def record(tag: str) -> str:
    starts.append((tag, time.monotonic()))
    return tag


async def counted(seconds: float) -> None:
    """Records how many of these run at once (``running["max"]``)."""
    running["now"] += 1
    running["max"] = max(running["max"], running["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        running["now"] -= 1


async def throttled_once(key: str, retry_after: float) -> str:
    """Raises ``asyncjobs.Throttled`` the first time it runs for ``key``."""
    from asyncjobs.limits import Throttled

    seen.append(key)
    if seen.count(key) == 1:
        raise Throttled(retry_after)
    return f"ran {key} after throttling"


async def started_then_wait(tag: str) -> str:
    """Records its start in ``starts``, then waits for the gate named ``tag``."""
    starts.append((tag, time.monotonic()))
    running["now"] += 1
    running["max"] = max(running["max"], running["now"])
    try:
        await gate(tag).wait()
    finally:
        running["now"] -= 1
    return tag
