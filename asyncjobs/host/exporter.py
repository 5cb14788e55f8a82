"""``asyncjobs-worker exporter``: queue metrics served from Redis with no worker running.

Workers export queue sizes only while they run, so with the whole fleet down the backlog alert had
nothing to fire on.  The exporter runs the same :class:`~asyncjobs.host.sampler.QueueSampler` as the
workers, under the same per-queue lock: while a worker samples a queue the exporter says nothing
about it (a sum over instances still counts each queue once), and once the workers are gone their
locks expire (about 30 s) and the exporter takes over.  With no queue named it follows every queue
RQ knows (``rq:queues``).  ``asyncjobs_workers_live`` counts live workers, stock and asyncjobs alike,
registered for those queues: 0 when none is, which is what the no-worker alert fires on.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from asyncjobs.connection import RedisTarget
from asyncjobs.host.probes import OpsServer
from asyncjobs.host.sampler import SAMPLE_INTERVAL, QueueSampler
from asyncjobs.protocol import keys

__all__ = ["run_exporter"]

log = logging.getLogger("asyncjobs.exporter")


def _known_queues(conn: Any) -> tuple[str, ...]:
    prefix = keys.DEFAULT.queue_prefix
    names = (m.decode() if isinstance(m, bytes) else str(m) for m in conn.smembers(keys.DEFAULT.queues))
    return tuple(sorted(n[len(prefix):] for n in names if n.startswith(prefix)))


def run_exporter(
    target: RedisTarget, queues: Sequence[str], *, port: int, host: str, interval: float = SAMPLE_INTERVAL
) -> int:
    """Serve ``/metrics`` on ``host:port`` until SIGTERM/SIGINT; exit status 0, 2 if the port is taken."""
    from prometheus_client import CollectorRegistry

    def connect() -> Any:
        return target.sync_client(socket_timeout=5, socket_connect_timeout=5)

    fixed = tuple(dict.fromkeys(queues))
    sampler = QueueSampler(connect, fixed, interval)
    registry = CollectorRegistry()
    registry.register(sampler)
    try:
        server = OpsServer(host, port, registry=registry)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%s: %s; choose a free --port", host, port, exc)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.start()
    log.info("exporting %s from %s on http://%s:%d/metrics",
             ", ".join(fixed) if fixed else "every RQ queue", target.describe(), host, port)
    lister: Any = None
    try:
        while not stop.is_set():
            if not fixed:
                try:
                    lister = lister or connect()
                    sampler.queues = _known_queues(lister)
                except Exception as exc:  # Redis down: the sampler reports it, keep the last list
                    log.debug("could not list the queues: %s", exc)
                    lister = None
            sampler.tick()
            stop.wait(min(1.0, interval))
    finally:
        sampler.stop()
        server.close()
        if lister is not None:
            lister.close()
    log.info("exporter stopped")
    return 0
