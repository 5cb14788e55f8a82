"""``asyncjobs-worker --processes N``: supervise N worker processes.

Each child is a full worker with its own RQ identity (``<name>-<i>`` when a
name is given).  A child that dies is restarted (its in-flight jobs are
recovered by RQ's abandoned-job maintenance), and so is one that recycled itself
(``--max-jobs``, ``--max-memory``: it drained first), at once; only a stop of the
whole pool, ``--burst`` and ``--max-idle-time`` end children for good.
SIGTERM/SIGINT is forwarded so every child drains gracefully; a second signal is
forwarded too (cold stop).

With ``--key-prefix`` given (RQ 3), there are ``N`` children per prefix, each started as a fresh
interpreter with ``RQ_KEY_PREFIX`` set to its prefix: RQ reads the prefix once, at import, so RQ's own
code in a child (maintenance, the scheduler, the ``Job`` objects it hands to jobs) uses that prefix's
keys (docs/rq-protocol.md §14.3).

With ``--metrics-port``/``--health-port`` the supervisor alone listens, for all its children:
``/metrics`` aggregates the children's values (prometheus_client's multiprocess mode, in a
temporary ``PROMETHEUS_MULTIPROC_DIR`` it creates and removes), ``/livez`` fails when any
child's event loop is blocked, ``/readyz`` when any child is not registered, Redis is
unreachable, or the pool is draining.  Children write their loop heartbeat and state into
shared memory (:class:`~asyncjobs.host.probes.HealthBoard`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import Any

from asyncjobs.backoff import RetryPolicy
from asyncjobs.host.probes import OpsServer, close_servers, start_servers
from asyncjobs.host.sampler import QueueSampler
from asyncjobs.protocol.keys import DEFAULT, Keys
from asyncjobs.protocol.store import RedisStore
from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.observer import HealthBoard, Slot
from asyncjobs.worker.recycle import RECYCLE_EXIT

#: A child's exit status for a configuration error (as argparse's): the pool stops instead of restarting it.
CONFIG_EXIT = 2

log = logging.getLogger("asyncjobs.pool")

#: A child that dies young is restarted after 0.5 s, 1 s, 2 s ... up to 30 s.
RESTART_BACKOFF = RetryPolicy(max_attempts=1, backoff_base=0.5, backoff_max=30.0, jitter="none")


def _watch_parent(parent: int) -> None:
    """If the supervisor dies (even by SIGKILL), drain and exit instead of running orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("supervisor %d is gone: shutting down", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(
    config: WorkerConfig,
    use_uvloop: bool,
    parent: int,
    slot: Slot | None,
    mp_dir: str | None,
    setup: Callable[[], None] | None = None,
) -> None:
    # First: the supervisor's own handler came with the fork, and would run here (it signals the
    # supervisor's children, which are not ours: AssertionError) if the pool is stopped while this child
    # still imports; record stop signals instead, and hand them to the worker (as the console script does).
    early: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, record)
    from asyncjobs.host.runner import run_worker

    if setup is not None:  # a spawned child (--key-prefix): its logging is not inherited
        setup()

    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="asyncjobs-parent-watch").start()
    os._exit(run_worker(config, use_uvloop=use_uvloop, slot=slot, multiprocess_dir=mp_dir, exits_after=True,
                        pooled=True, early_signals=early))


def _prefix_target(config: WorkerConfig, keys: Keys) -> Any:
    """Where ``keys``' prefix lives: on a Redis Cluster, the node owning its slot."""
    target = config.connection
    return replace(target, slot_key=keys.prefix) if target.cluster else target


def _bury(config: WorkerConfig, name: str, pid: int, keys: Keys = DEFAULT) -> None:
    """Register the death of a child that died without doing so, so its name can be reused."""

    async def go() -> None:
        conn = _prefix_target(config, keys).async_client()
        try:
            if await RedisStore.bury(conn, name, config.queues, pid, keys=keys):
                log.info("registered the death of %s (pid %d)", name, pid)
        finally:
            await conn.aclose()

    try:
        asyncio.run(go())
    except Exception as exc:  # Redis down: the key expires on its own (<= 90 s busy, 480 s idle)
        log.warning("could not register the death of %s: %s", name, exc)


def run_pool(
    config: WorkerConfig,
    processes: int,
    *,
    use_uvloop: bool = False,
    prefixes: tuple[str, ...] = (),
    child_setup: Callable[[], None] | None = None,
    early_signals: list[int] | None = None,
) -> int:
    """Supervise ``processes`` workers, or ``processes`` per key prefix when ``prefixes`` are given;
    ``child_setup`` (picklable) runs first in each child of a prefix (its logging); ``early_signals``:
    stop signals the console script recorded before the supervisor's handlers (then no child starts)."""
    total = processes * max(1, len(prefixes))
    early = early_signals if early_signals is not None else []
    if config.metrics_port is None and config.health_port is None:
        return _supervise(config, processes, use_uvloop, None, None, prefixes=prefixes, child_setup=child_setup,
                          early=early)
    from asyncjobs import metrics
    from asyncjobs._extras import MissingExtraError
    from asyncjobs.host.runner import ops_redis_client

    if config.name is None:  # the probes look the children up by name
        config = replace(config, name=f"asyncjobs-c{config.concurrency}-{uuid.uuid4().hex[:12]}")
    board = HealthBoard(total)
    mp_dir = tempfile.mkdtemp(prefix="asyncjobs-metrics-") if config.metrics_port is not None else None
    if mp_dir is not None:
        log.info("metrics of %d worker processes aggregated through %s (removed at exit)", total, mp_dir)
    sampler: Any = None
    try:
        if mp_dir is not None:
            # Before prometheus_client is imported here, so forked children write to files too.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
            registry = metrics.new_registry(mp_dir)
            metrics.preload()
            if len(prefixes) <= 1:  # queue gauges have no prefix label: one keyspace only
                sampler = QueueSampler(lambda: ops_redis_client(config), config.queues)
                registry.register(sampler)
        else:
            registry = None
    except MissingExtraError as exc:
        log.error("%s", exc)
        shutil.rmtree(mp_dir or "", ignore_errors=True)
        return 2
    try:
        return _supervise(config, processes, use_uvloop, board, mp_dir, registry, sampler, prefixes=prefixes,
                          child_setup=child_setup, early=early)
    finally:
        if sampler is not None:
            sampler.stop()
        if mp_dir is not None:
            shutil.rmtree(mp_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _supervise(
    config: WorkerConfig,
    processes: int,
    use_uvloop: bool,
    board: HealthBoard | None,
    mp_dir: str | None,
    registry: Any = None,
    sampler: Any = None,
    *,
    prefixes: tuple[str, ...] = (),
    child_setup: Callable[[], None] | None = None,
    early: list[int] | None = None,
) -> int:
    # Children of another key prefix must import RQ afresh (it reads RQ_KEY_PREFIX at import): spawn.
    ctx: Any = mp.get_context("spawn" if prefixes else "fork")
    total = processes * max(1, len(prefixes))

    def keys_of(i: int) -> Keys:
        return Keys(prefixes[i // processes]) if prefixes else DEFAULT

    stopping = {"count": 0}
    children: dict[int, mp.process.BaseProcess] = {}
    started_at: dict[int, float] = {}
    early_deaths: dict[int, int] = {}
    restart_at: dict[int, float] = {}

    def child_config(i: int) -> WorkerConfig:
        child = replace(
            config, name=f"{config.name}-{i}" if config.name else None, metrics_port=None, health_port=None
        )
        if prefixes and config.connection.cluster:  # a Redis Cluster: the node owning this prefix's slot
            child = replace(child, redis=_prefix_target(config, keys_of(i)))
        return child

    def start(i: int) -> None:
        slot = board.slots[i] if board is not None else None
        if slot is not None:
            slot.reset()
        proc = ctx.Process(
            target=_child, args=(child_config(i), use_uvloop, os.getpid(), slot, mp_dir, child_setup if prefixes else None),
            name=f"asyncjobs-worker-{i}",
        )
        saved = os.environ.get("RQ_KEY_PREFIX")
        if prefixes:
            os.environ["RQ_KEY_PREFIX"] = keys_of(i).prefix  # the spawned child's environment
        try:
            proc.start()
        finally:
            if prefixes:
                if saved is None:
                    os.environ.pop("RQ_KEY_PREFIX", None)
                else:
                    os.environ["RQ_KEY_PREFIX"] = saved
        children[i] = proc
        started_at[i] = time.monotonic()
        where = f" for key prefix {keys_of(i).prefix!r}" if prefixes else ""
        log.info("started worker process %d (pid %s)%s", i, proc.pid, where)

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping["count"] += 1
        for proc in children.values():
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, signum)

    def alive(i: int) -> bool:
        proc = children.get(i)
        return proc is not None and proc.is_alive()

    servers: list[OpsServer] = []
    if board is not None:
        try:
            servers = _start(config, total, board, registry, child_config, stopping, alive, keys_of, prefixes)
        except OSError as exc:
            log.error("%s", exc)
            return 2
    try:
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        if early:  # stopped before the handlers above: start nothing
            log.info("stop requested while starting: no worker process started")
            return 0
        for i in range(total):
            start(i)
        _loop(config, children, started_at, early_deaths, restart_at, stopping, child_config, start, board, mp_dir,
              sampler, keys_of)
    finally:
        close_servers(servers)
    return CONFIG_EXIT if stopping.get("config_error") else 0


def _start(
    config: WorkerConfig,
    processes: int,
    board: HealthBoard,
    registry: Any,
    child_config: Any,
    stopping: dict[str, int],
    alive: Any,
    keys_of: Any,
    prefixes: tuple[str, ...],
) -> list[OpsServer]:
    names = [child_config(i).name or "" for i in range(processes)]
    # /readyz checks each child's worker key; on a Redis Cluster, prefixes live on different nodes and
    # one client cannot read them all: readiness then comes from the children's own reports.
    check_redis = not (config.connection.cluster and len(prefixes) > 1)
    return start_servers(
        metrics_port=config.metrics_port, metrics_host=config.metrics_host,
        health_port=config.health_port, health_host=config.health_host,
        board=board, names=names, worker_keys=[keys_of(i).worker(n) for i, n in enumerate(names)],
        redis_client=(lambda: _prefix_target(config, keys_of(0)).sync_client(socket_timeout=3, socket_connect_timeout=3))
        if check_redis else None,
        max_loop_lag=config.max_loop_lag, registry=registry,
        draining=lambda: stopping["count"] > 0, alive=alive,
    )


def _loop(
    config: WorkerConfig,
    children: dict[int, mp.process.BaseProcess],
    started_at: dict[int, float],
    early_deaths: dict[int, int],
    restart_at: dict[int, float],
    stopping: dict[str, int],
    child_config: Any,
    start: Any,
    board: HealthBoard | None,
    mp_dir: str | None,
    sampler: Any,
    keys_of: Any,
) -> None:
    while children or (restart_at and not stopping["count"]):
        for i, proc in list(children.items()):
            if proc.is_alive():
                continue
            proc.join()
            del children[i]
            if board is not None:
                board.slots[i].reset()
            if mp_dir is not None and proc.pid:
                from asyncjobs import metrics

                metrics.mark_process_dead(proc.pid, mp_dir)
            # Every child that ends is replaced, except on a stop of the whole pool, in --burst, and after
            # --max-idle-time (exit 0: the child found no work; the pool ends when all have).
            if stopping["count"] or config.burst or (proc.exitcode == 0 and config.max_idle_time is not None):
                continue
            if proc.exitcode == CONFIG_EXIT:  # its own message said why; a restart would fail alike
                log.error("worker process %d (pid %s) stopped on a configuration error (exit status 2): stopping "
                          "the pool", i, proc.pid)
                stopping["count"] += 1
                stopping["config_error"] = 1
                restart_at.clear()
                for other in children.values():
                    if other.pid and other.is_alive():
                        os.kill(other.pid, signal.SIGTERM)
                continue
            if proc.exitcode == RECYCLE_EXIT:  # --max-jobs/--max-memory: drained and deregistered itself
                log.info("worker process %d (pid %s) recycled itself; starting a fresh one", i, proc.pid)
                early_deaths[i] = 0
                restart_at[i] = time.monotonic()
                continue
            name = child_config(i).name
            if name and proc.pid:
                _bury(config, name, proc.pid, keys_of(i))
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
        if sampler is not None and not stopping["count"]:
            sampler.tick()
        time.sleep(0.2)
