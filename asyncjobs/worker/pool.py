"""``asyncjobs-worker --processes N``: supervise N worker processes.

Each child is a full worker with its own RQ identity (``<name>-<i>`` when a
name is given).  A child that dies is restarted (its in-flight jobs are
recovered by RQ's abandoned-job maintenance); SIGTERM/SIGINT is forwarded so
every child drains gracefully; a second signal is forwarded too (cold stop).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import replace
from types import FrameType

from asyncjobs.backoff import RetryPolicy
from asyncjobs.protocol.store import RedisStore
from asyncjobs.worker.config import WorkerConfig

log = logging.getLogger("asyncjobs.pool")

#: A child that dies young is restarted after 0.5 s, 1 s, 2 s ... up to 30 s.
RESTART_BACKOFF = RetryPolicy(max_attempts=1, backoff_base=0.5, backoff_max=30.0, jitter="none")


def _watch_parent(parent: int) -> None:
    """If the supervisor dies (even by SIGKILL), drain and exit instead of running orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("supervisor %d is gone: shutting down", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(config: WorkerConfig, use_uvloop: bool, parent: int) -> None:
    from asyncjobs.worker.runner import run_worker

    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="asyncjobs-parent-watch").start()
    os._exit(run_worker(config, use_uvloop=use_uvloop))


def _bury(config: WorkerConfig, name: str, pid: int) -> None:
    """Register the death of a child that died without doing so, so its name can be reused."""

    async def go() -> None:
        conn = config.connection.async_client()
        try:
            if await RedisStore.bury(conn, name, config.queues, pid):
                log.info("registered the death of %s (pid %d)", name, pid)
        finally:
            await conn.aclose()

    try:
        asyncio.run(go())
    except Exception as exc:  # Redis down: the key expires on its own (<= 90 s busy, 480 s idle)
        log.warning("could not register the death of %s: %s", name, exc)


def run_pool(config: WorkerConfig, processes: int, *, use_uvloop: bool = False) -> int:
    ctx = mp.get_context("fork")
    stopping = {"count": 0}
    children: dict[int, mp.process.BaseProcess] = {}
    started_at: dict[int, float] = {}
    early_deaths: dict[int, int] = {}
    restart_at: dict[int, float] = {}

    def child_config(i: int) -> WorkerConfig:
        return replace(config, name=f"{config.name}-{i}" if config.name else None)

    def start(i: int) -> None:
        proc = ctx.Process(
            target=_child, args=(child_config(i), use_uvloop, os.getpid()), name=f"asyncjobs-worker-{i}"
        )
        proc.start()
        children[i] = proc
        started_at[i] = time.monotonic()
        log.info("started worker process %d (pid %s)", i, proc.pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping["count"] += 1
        for proc in children.values():
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(processes):
        start(i)
    while children or (restart_at and not stopping["count"]):
        for i, proc in list(children.items()):
            if proc.is_alive():
                continue
            proc.join()
            del children[i]
            if stopping["count"] or config.burst or proc.exitcode == 0:
                continue
            name = child_config(i).name
            if name and proc.pid:
                _bury(config, name, proc.pid)
            # Back off when a child keeps dying young (bad config, Redis down); reset after 60 s of life.
            lived = time.monotonic() - started_at[i]
            early_deaths[i] = 0 if lived > 60 else early_deaths.get(i, 0) + 1
            delay = RESTART_BACKOFF.delay(early_deaths[i]) if early_deaths[i] else 0.0
            log.warning(
                "worker process %d (pid %s) exited with %s; restarting in %.1fs", i, proc.pid, proc.exitcode, delay
            )
            restart_at[i] = time.monotonic() + delay
        for i, when in list(restart_at.items()):
            if stopping["count"]:
                restart_at.clear()
                break
            if time.monotonic() >= when:
                del restart_at[i]
                start(i)
        time.sleep(0.2)
    return 0
