"""Run one worker process: logging set-up, event loop choice, signal handlers, exit code."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from asyncjobs.host.logs import setup_logging
from asyncjobs.host.probes import OpsServer, Watchdog, close_servers, start_servers
from asyncjobs.host.sampler import QueueSampler
from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.observer import HealthBoard, Observer, Slot
from asyncjobs.worker.recycle import RECYCLE_EXIT

__all__ = ["run_worker", "setup_logging"]

log = logging.getLogger("asyncjobs")


def ops_redis_client(config: WorkerConfig) -> Any:
    """A synchronous client for the probes and the queue sampler (short timeouts, own connections)."""
    return config.connection.sync_client(socket_timeout=3, socket_connect_timeout=3)


def run_worker(
    config: WorkerConfig,
    *,
    use_uvloop: bool = False,
    slot: Slot | None = None,
    multiprocess_dir: str | None = None,
    early_signals: Sequence[int] = (),
    exits_after: bool = False,
    pooled: bool = False,
) -> int:
    """Run one worker; the exit status: 0, or :data:`~asyncjobs.worker.recycle.RECYCLE_EXIT` after a
    ``--max-memory`` recycle (and after a ``--max-jobs`` one when ``pooled``: a ``--processes`` child, which
    its supervisor replaces), 1 or 2 when it could not start.  ``slot``/``multiprocess_dir``: a ``--processes`` child whose supervisor
    serves the endpoints; otherwise this process serves ``--metrics-port``/``--health-port``.
    ``early_signals``: SIGTERM/SIGINT received before the event loop's handlers were installed (the
    console script records them, ``asyncjobs.cli.entry``); they count as if received just after.
    ``exits_after``: the process exits once this returns (the console script): stop signals arriving
    after the event loop has closed (and taken its handlers with it) are absorbed instead of killing
    a worker that has already stopped."""
    from asyncjobs import metrics
    from asyncjobs._extras import MissingExtraError
    from asyncjobs.hooks import HookError
    from asyncjobs.protocol.serializers import SerializerError
    from asyncjobs.worker.cron import CronConfigError
    from asyncjobs.worker.worker import Worker

    metrics_on = config.metrics_port is not None or multiprocess_dir is not None
    registry: Any = None
    try:
        if metrics_on:
            registry = metrics.enable(multiprocess_dir=multiprocess_dir)
            metrics.declare_queues(config.queues)  # every series at 0 before the first job ends
    except MissingExtraError as exc:
        log.error("%s", exc)
        return 2
    board: HealthBoard | None = None
    if slot is None:  # always: the loop watchdog reads it, with or without ops ports
        board = HealthBoard(1)
        slot = board.slots[0]
    board_served = None if config.metrics_port is None and config.health_port is None else board
    try:
        worker = Worker(config, observer=Observer(slot, metrics_on=metrics_on))
    except (SerializerError, HookError, CronConfigError) as exc:
        log.error("%s", exc)
        return 2
    servers: list[OpsServer] = []
    sampler: Any = None
    watchdog = Watchdog(slot, config.max_loop_lag, metrics_on=metrics_on) if slot is not None else None
    if board_served is not None:  # this process serves its own endpoints
        if registry is not None:
            sampler = QueueSampler(lambda: ops_redis_client(config), config.queues)
            registry.register(sampler)
        try:
            servers = start_servers(
                metrics_port=config.metrics_port, metrics_host=config.metrics_host,
                health_port=config.health_port, health_host=config.health_host,
                board=board_served, names=[worker.name], redis_client=lambda: ops_redis_client(config),
                max_loop_lag=config.max_loop_lag, registry=registry,
            )
        except OSError as exc:
            log.error("%s", exc)
            return 2
        if sampler is not None:
            sampler.start()
    if watchdog is not None:
        watchdog.start()
    try:
        code = _run(worker, config, use_uvloop, early_signals, exits_after)
    finally:
        if watchdog is not None:
            watchdog.stop()
        if sampler is not None:
            sampler.stop()
            registry.unregister(sampler)
        close_servers(servers)
    if code == 0 and (worker.recycled == "max_memory" or (pooled and worker.recycled)):
        return RECYCLE_EXIT
    return code


def _run(
    worker: Any, config: WorkerConfig, use_uvloop: bool, early_signals: Sequence[int] = (), exits_after: bool = False
) -> int:
    from asyncjobs.connection import RedisRefused, RedisUnreachable
    from asyncjobs.hooks import StartupHookFailed
    from asyncjobs.protocol.store import WorkerNameTaken
    if config.allowed_modules and getattr(worker.serializer, "name", None) not in ("pickle", "json"):
        log.warning(
            "--allow-module restricts which functions run, but the custom serializer %r decodes payloads "
            "with its own loads(): make sure it cannot run code from untrusted data",
            config.serializer,
        )

    async def main() -> None:
        # A process that exits after the worker: Python-level handlers, which closing the loop leaves in
        # place (the loop's own would be reset to the default action, death by signal, see Shutdown).
        worker.install_signal_handlers(process_wide=exits_after)
        if early_signals:  # a list the console script's own handler appended to until just now
            log.info("received %s while starting", ", ".join(signal.Signals(s).name for s in early_signals))
            worker.request_stop()
            if len(early_signals) > 1:
                worker.request_cold_stop()
        await worker.run()

    try:
        if use_uvloop:
            try:
                import uvloop
            except ImportError:
                log.warning("--uvloop given but uvloop is not installed; using asyncio's loop")
            else:
                uvloop.run(main())
                return 0
        asyncio.run(main())
    except (WorkerNameTaken, StartupHookFailed) as exc:
        log.error("%s", exc)
        return 1
    except RedisRefused as exc:
        log.error("%s", exc)
        return 2
    except RedisUnreachable as exc:
        log.error("%s", exc)
        return 1
    finally:
        if exits_after:
            # Closing the loop restored the default action (death by signal): the second signal of a
            # cold stop, sent just after the first, must not kill a worker that has already stopped.
            # SIG_IGN, not a Python handler: the interpreter's exit puts Python handlers back to the
            # default action before the process is gone, but leaves an ignored signal ignored.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
    return 0
