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
