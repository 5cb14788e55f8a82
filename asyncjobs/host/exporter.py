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


class RqExporterNames:
    """rq-exporter's (mdawar/rq-exporter) metric names, for dashboards built on them:
    ``rq_jobs{queue,status}`` (queued, started, finished, failed, deferred, scheduled) for the queues
    the sampler holds, and ``rq_workers{name,queues,state}`` = 1 per registered worker.  Read from
    Redis after each of the sampler's rounds; scrapes never touch Redis."""

    def __init__(self, sampler: QueueSampler, connect: Any) -> None:
        self._sampler = sampler
        self._connect = connect
        self._conn: Any = None
        self._seen: Any = None
        self._jobs: dict[str, dict[str, float]] = {}
        self._workers: list[tuple[str, str, str]] = []

    def refresh(self) -> None:
        reading = self._sampler.reading
        if reading is self._seen:
            return
        self._seen = reading
        try:
            self._conn = self._conn or self._connect()
            self._read(self._conn, reading)
        except Exception as exc:  # Redis down: the sampler reports it; export nothing stale
            log.debug("rq-exporter names: %s", exc)
            self._jobs, self._workers = {}, []
            self._conn = None

    def _read(self, conn: Any, reading: dict[str, Any]) -> None:
        import time

        queues = list(reading["queues"])
        pipe = conn.pipeline(transaction=False)
        for q in queues:
            pipe.zcount(keys.DEFAULT.finished(q), time.time(), "+inf")  # unexpired entries (score = expiry)
        finished = pipe.execute() if queues else []
        jobs: dict[str, dict[str, float]] = {}
        for q, done in zip(queues, finished, strict=True):
            sizes = reading["queues"][q]
            jobs[q] = {s: float(sizes[s]) for s in ("queued", "started", "failed", "deferred", "scheduled")}
            jobs[q]["finished"] = float(done)
        worker_keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in conn.smembers(keys.DEFAULT.workers))
        pipe = conn.pipeline(transaction=False)
        for key in worker_keys:
            pipe.hmget(key, "queues", "state")
        workers = []
        for key, (queues_raw, state) in zip(worker_keys, pipe.execute() if worker_keys else [], strict=True):
            if queues_raw is None and state is None:
                continue  # a stale entry: the worker's key expired
            name = key.removeprefix(keys.DEFAULT.worker_prefix)
            workers.append((name, (queues_raw or b"").decode(), (state or b"").decode()))
        self._jobs, self._workers = jobs, workers

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        jobs = GaugeMetricFamily("rq_jobs", "RQ jobs by status", labels=["queue", "status"])
        for q, counts in self._jobs.items():
            for status in ("queued", "started", "finished", "failed", "deferred", "scheduled"):
                jobs.add_metric([q, status], counts[status])
        yield jobs
        workers = GaugeMetricFamily("rq_workers", "RQ workers", labels=["name", "queues", "state"])
        for name, queues, state in self._workers:
            workers.add_metric([name, queues, state], 1.0)
        yield workers


def run_exporter(
    target: RedisTarget,
    queues: Sequence[str],
    *,
    port: int,
    host: str,
    interval: float = SAMPLE_INTERVAL,
    rq_exporter_names: bool = False,
) -> int:
    """Serve ``/metrics`` on ``host:port`` until SIGTERM/SIGINT; exit status 0, 2 if the port is taken."""
    from prometheus_client import CollectorRegistry

    def connect() -> Any:
        return target.sync_client(socket_timeout=5, socket_connect_timeout=5)

    fixed = tuple(dict.fromkeys(queues))
    sampler = QueueSampler(connect, fixed, interval)
    registry = CollectorRegistry()
    registry.register(sampler)
    rq_names = RqExporterNames(sampler, connect) if rq_exporter_names else None
    if rq_names is not None:
        registry.register(rq_names)
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
            if rq_names is not None:
                rq_names.refresh()
            stop.wait(min(1.0, interval))
    finally:
        sampler.stop()
        server.close()
        if lister is not None:
            lister.close()
    log.info("exporter stopped")
    return 0
