"""Jobs and hook objects for the hook tests: every call is recorded with the thread it ran on."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import asyncjobs
from asyncjobs.hooks import JobOutcome, JobView

CTX: contextvars.ContextVar[str | None] = contextvars.ContextVar("hook_test_ctx", default=None)
ACTX: contextvars.ContextVar[str | None] = contextvars.ContextVar("hook_test_actx", default=None)
local = threading.local()  # what Django's per-thread connections are
events: list[dict[str, Any]] = []


def _events(kind: str, job_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind and e["id"] == job_id]


class SyncHooks:
    """Plain-def hooks, like ``close_old_connections`` ones."""

    def before_job(self, job: JobView) -> None:
        local.conn = f"conn-{job.id}"
        CTX.set(f"ctx-{job.id}")
        events.append({"kind": "before", "id": job.id, "thread": threading.get_ident(), "is_async": job.is_async,
                       "queue": job.queue, "func": job.func_name, "tag": job.meta.get("tag"),
                       "rq_id": job.job().id})

    def after_job(self, job: JobView, outcome: JobOutcome) -> None:
        events.append({"kind": "after", "id": job.id, "thread": threading.get_ident(), "status": str(outcome.status),
                       "conn": getattr(local, "conn", None), "exception": outcome.exception,
                       "exc_text": outcome.exc_text, "duration": outcome.duration, "ctx": CTX.get()})
        local.conn = None


class AsyncHooks:
    async def before_job(self, job: JobView) -> None:
        await asyncio.sleep(0)
        ACTX.set(f"actx-{job.id}")
        job.state["mark"] = job.id
        events.append({"kind": "abefore", "id": job.id, "thread": threading.get_ident()})

    async def after_job(self, job: JobView, outcome: JobOutcome) -> None:
        await asyncio.sleep(0)
        events.append({"kind": "aafter", "id": job.id, "thread": threading.get_ident(), "status": str(outcome.status),
                       "mark": job.state.get("mark"), "actx": ACTX.get(), "exception": outcome.exception})


class BrokenHooks:
    def before_job(self, job: JobView) -> None:
        raise RuntimeError("hook broke before")

    def after_job(self, job: JobView, outcome: JobOutcome) -> None:
        raise RuntimeError("hook broke after")


class BrokenAsyncHooks:
    async def before_job(self, job: JobView) -> None:
        raise RuntimeError("async hook broke before")

    async def after_job(self, job: JobView, outcome: JobOutcome) -> None:
        raise RuntimeError("async hook broke after")


def _seen(kind: str) -> dict[str, Any]:
    job = asyncjobs.get_current_job()
    seen = {"kind": kind, "id": job.id, "thread": threading.get_ident(), "conn": getattr(local, "conn", None),
            "ctx": CTX.get(), "actx": ACTX.get()}
    events.append(seen)
    return seen


def sync_ok(x: int) -> int:
    _seen("job")
    return x


def sync_boom() -> None:
    _seen("job")
    raise ValueError("job boom")


async def async_ok(x: int) -> int:
    await asyncio.sleep(0)
    _seen("job")
    return x


async def async_boom() -> None:
    _seen("job")
    raise ValueError("async job boom")


def sync_spin(seconds: float) -> str:
    import time

    _seen("job")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "spun"


async def async_sleep(seconds: float) -> str:
    _seen("job")
    await asyncio.sleep(seconds)
    return "slept"
