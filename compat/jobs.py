"""Job functions for the compat suite and the fixture capture script.

Producers enqueue these with stock RQ (``q.enqueue(compat.jobs.add, 2, 3)``);
workers run with cwd = the project root, so ``compat.jobs`` imports there just
as an application's ``tasks`` module does.  Jobs that talk to Redis take the
URL as an argument (no connection from the worker is assumed), so they behave
the same under any worker and any serializer.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from rq import Retry, get_current_job

# ---------------------------------------------------------------- plain values


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def echo(value: Any) -> Any:
    return value


async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


def noop() -> None:
    return None


def boom(message: str = "boom") -> None:
    raise ValueError(message)


async def async_boom(message: str = "boom") -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


def unserializable() -> Any:
    """Returns a value pickle and JSON both reject (stock stores 'Unserializable return value')."""
    return threading.Lock()


async def async_unserializable() -> Any:
    return threading.Lock()


def kwargs_job(a: int, b: int = 0, *, label: str = "") -> str:
    return f"{label}:{a + b}"


# ------------------------------------------------------------ sleeping jobs


def sleep_sync(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def sleep_async(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


# ------------------------------------------------- Redis-backed observations


def record(redis_url: str, key: str, token: str) -> str:
    """RPUSH ``token`` onto ``key``: counts executions exactly."""
    conn = redis.Redis.from_url(redis_url)
    try:
        conn.rpush(key, token)
    finally:
        conn.close()
    return token


async def async_record(redis_url: str, key: str, token: str) -> str:
    conn = aioredis.Redis.from_url(redis_url)
    try:
        await conn.rpush(key, token)
    finally:
        await conn.aclose()
    return token


def record_then_boom(redis_url: str, key: str, token: str) -> None:
    record(redis_url, key, token)
    raise ValueError(f"boom after {token}")


class BarrierTimeout(RuntimeError):
    """Not every party reached the barrier in time (the jobs did not run concurrently)."""


def raises_timeout_error() -> None:
    """A job raising the builtin TimeoutError is a job failure, not a job timeout."""
    raise TimeoutError("user code timed out talking to something")


async def async_raises_timeout_error() -> None:
    await asyncio.sleep(0)
    raise TimeoutError("async user code timed out")


async def barrier(redis_url: str, key: str, parties: int, deadline_s: float = 30.0) -> int:
    """INCR ``key`` then wait until it reaches ``parties``.

    All ``parties`` jobs complete only if they run at the same time: this is how
    the suite proves concurrency by behaviour.  Raises BarrierTimeout otherwise.
    """
    conn = aioredis.Redis.from_url(redis_url)
    try:
        arrived = int(await conn.incr(key))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        while int(await conn.get(key) or 0) < parties:
            if loop.time() >= deadline:
                seen = await conn.decr(key)  # leave the barrier, so later arrivals cannot pass it
                raise BarrierTimeout(f"barrier {key}: only {seen + 1} of {parties} arrived")
            await asyncio.sleep(0.02)
        return arrived
    finally:
        await conn.aclose()


def sync_barrier(redis_url: str, key: str, parties: int, deadline_s: float = 30.0) -> int:
    conn = redis.Redis.from_url(redis_url)
    try:
        arrived = int(conn.incr(key))
        deadline = time.monotonic() + deadline_s
        while int(conn.get(key) or 0) < parties:
            if time.monotonic() >= deadline:
                seen = int(conn.decr(key))  # leave the barrier, so later arrivals cannot pass it
                raise BarrierTimeout(f"barrier {key}: only {seen + 1} of {parties} arrived")
            time.sleep(0.02)
        return arrived
    finally:
        conn.close()


def hold(redis_url: str, name: str, deadline_s: float = 60.0) -> str:
    """RPUSH ``name`` to ``held:started``, then block until key ``release:<name>`` exists.

    Lets a test keep a job in flight (for shutdown, stop-job, kill tests) and
    release it when it chooses, without sleeping.
    """
    conn = redis.Redis.from_url(redis_url)
    try:
        conn.rpush("held:started", name)
        deadline = time.monotonic() + deadline_s
        while not conn.exists(f"release:{name}"):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"hold {name}: never released")
            time.sleep(0.02)
        conn.rpush("held:finished", name)
        return name
    finally:
        conn.close()


async def async_hold(redis_url: str, name: str, deadline_s: float = 60.0) -> str:
    conn = aioredis.Redis.from_url(redis_url)
    try:
        await conn.rpush("held:started", name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        while not await conn.exists(f"release:{name}"):
            if loop.time() >= deadline:
                raise TimeoutError(f"hold {name}: never released")
            await asyncio.sleep(0.02)
        await conn.rpush("held:finished", name)
        return name
    finally:
        await conn.aclose()


# --------------------------------------------------------------------- meta


def set_meta(key: str, value: Any) -> str:
    """Update meta through ``rq.get_current_job()``; returns the job id it saw."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("rq.get_current_job() returned None inside a job")
    job.meta[key] = value
    job.save_meta()  # type: ignore[no-untyped-call]
    return str(job.id)


async def async_set_meta(key: str, value: Any) -> str:
    """Update meta from an ``async def`` job: asyncjobs' get_current_job, else rq's."""
    job: Any = None
    try:
        import asyncjobs

        job = asyncjobs.get_current_job()
    except (ImportError, AttributeError):
        job = None
    if job is None:
        job = get_current_job()
    if job is None:
        raise RuntimeError("no current job inside an async job")
    job.meta[key] = value
    saved = job.save_meta()
    if inspect.isawaitable(saved):
        await saved
    return str(job.id)


async def asyncjobs_set_meta(key: str, value: Any) -> str:
    """Strictly ``asyncjobs.get_current_job()`` (asyncjobs-only tests)."""
    import asyncjobs

    job: Any = asyncjobs.get_current_job()
    if job is None:
        raise RuntimeError("asyncjobs.get_current_job() returned None inside an async job")
    job.meta[key] = value
    saved = job.save_meta()
    if inspect.isawaitable(saved):
        await saved
    return str(job.id)


def sync_asyncjobs_set_meta(key: str, value: Any) -> str:
    """``asyncjobs.get_current_job()`` from a sync (threaded) job."""
    import asyncjobs

    job: Any = asyncjobs.get_current_job()
    if job is None:
        raise RuntimeError("asyncjobs.get_current_job() returned None inside a threaded job")
    job.meta[key] = value
    job.save_meta()
    return str(job.id)


# ------------------------------------------------------------------ retries


def retry_returner(redis_url: str, key: str, max_retries: int, interval: int = 0) -> Retry:
    """Records the run, then *returns* a Retry (rq 2.x 'Retry as value')."""
    record(redis_url, key, "run")
    return Retry(max=max_retries, interval=interval)


def fail_until(redis_url: str, key: str, successes_after: int) -> str:
    """Fails until it has run ``successes_after`` times before, then succeeds."""
    conn = redis.Redis.from_url(redis_url)
    try:
        runs = int(conn.rpush(key, "run"))
    finally:
        conn.close()
    if runs <= successes_after:
        raise ValueError(f"failing run {runs}")
    return f"ok after {runs}"


# ------------------------------------------------- methods and instances


class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def greet(self, name: str) -> str:
        return f"{self.greeting} {name}"


class Adder:
    def __init__(self, base: int) -> None:
        self.base = base

    def __call__(self, x: int) -> int:
        return self.base + x


# ---------------------------------------------------------------- callbacks
# Stock signatures: success (job, connection, result); failure (job,
# connection, exc_type, exc_value, traceback); stopped (job, connection).
# The connection may be sync or async; both are handled.


def _callback_url(job: Any) -> str | None:
    meta = getattr(job, "meta", None) or {}
    url = meta.get("callback_redis_url") if isinstance(meta, dict) else None
    return str(url) if url else None


def _push_sync(job: Any, connection: Any, value: str) -> None:
    url = _callback_url(job)
    key = f"callbacks:{job.id}"
    if url:
        conn = redis.Redis.from_url(url)
        try:
            conn.rpush(key, value)
        finally:
            conn.close()
    else:
        connection.rpush(key, value)


async def _push_async(job: Any, connection: Any, value: str) -> None:
    url = _callback_url(job)
    key = f"callbacks:{job.id}"
    if url:
        conn = aioredis.Redis.from_url(url)
        try:
            await conn.rpush(key, value)
        finally:
            await conn.aclose()
    else:
        res = connection.rpush(key, value)
        if inspect.isawaitable(res):
            await res


def on_success_cb(job: Any, connection: Any, result: Any) -> None:
    _push_sync(job, connection, f"success:{result!r}")


def on_failure_cb(job: Any, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    _push_sync(job, connection, f"failure:{exc_type.__name__}:{exc_value}")


def on_stopped_cb(job: Any, connection: Any) -> None:
    _push_sync(job, connection, "stopped")


async def async_on_success_cb(job: Any, connection: Any, result: Any) -> None:
    await asyncio.sleep(0)
    await _push_async(job, connection, f"async-success:{result!r}")


async def async_on_failure_cb(job: Any, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    await asyncio.sleep(0)
    await _push_async(job, connection, f"async-failure:{exc_type.__name__}:{exc_value}")


def raising_success_cb(job: Any, connection: Any, result: Any) -> None:
    raise RuntimeError(f"success callback exploded on {result!r}")


def slow_success_cb(job: Any, connection: Any, result: Any) -> None:
    time.sleep(30)


# ------------------------------------------------------- exception handlers


def recording_exception_handler(job: Any, exc_type: Any, exc_value: Any, tb: Any) -> bool:
    """``--exception-handler compat.jobs.recording_exception_handler``: records, then lets the chain go on."""
    url = (
        job.args[0] if job.args and isinstance(job.args[0], str) and job.args[0].startswith("redis") else None
    )
    if url:
        conn = redis.Redis.from_url(url)
        try:
            conn.rpush(f"handled:{job.id}", f"{exc_type.__name__}:{exc_value}")
        finally:
            conn.close()
    return True


# ------------------------------------------------------------------ RQ 3 features


def span(redis_url: str, key: str, token: str, seconds: float = 0.05) -> str:
    """RPUSH ``+token`` to ``key``, sleep, RPUSH ``-token``: the list shows whether runs overlapped."""
    conn = redis.Redis.from_url(redis_url)
    try:
        conn.rpush(key, f"+{token}")
        time.sleep(seconds)
        conn.rpush(key, f"-{token}")
    finally:
        conn.close()
    return token


async def async_span(redis_url: str, key: str, token: str, seconds: float = 0.05) -> str:
    conn = aioredis.Redis.from_url(redis_url)
    try:
        await conn.rpush(key, f"+{token}")
        await asyncio.sleep(seconds)
        await conn.rpush(key, f"-{token}")
    finally:
        await conn.aclose()
    return token


def span_then_boom(redis_url: str, key: str, token: str) -> None:
    span(redis_url, key, token)
    raise ValueError(f"boom after {token}")


def retry_once_then(redis_url: str, key: str, value: Any, at_front: bool = False) -> Any:
    """Records the run; the first run *returns* ``Retry(max=1)``, the second returns ``value``."""
    conn = redis.Redis.from_url(redis_url)
    try:
        runs = int(conn.rpush(key, "run"))
    finally:
        conn.close()
    if runs == 1:
        return Retry(max=1, enqueue_at_front=at_front)
    return value


def cluster_record(redis_url: str, key: str, token: str, seconds: float = 0.0) -> str:
    """``record`` on a Redis Cluster (redis-py's cluster client: ``key`` may live on any node, and the
    client follows a failover), after ``seconds``; for the cluster tests."""
    time.sleep(seconds)
    conn = redis.RedisCluster.from_url(redis_url)
    try:
        conn.rpush(key, token)
    finally:
        conn.close()
    return token
