"""Queue sizes for the metrics endpoint, sampled by one process per queue across the deployment."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from asyncjobs.protocol import keys
from asyncjobs.protocol.queuestats import read_queue_sizes
from asyncjobs.protocol.scripts import lua

__all__ = ["SAMPLE_INTERVAL", "QueueSampler"]

log = logging.getLogger("asyncjobs.metrics")

#: Renew the lock, then read the queues, at this period; the lock outlives three missed rounds.
SAMPLE_INTERVAL = 10.0


def _lock_key(queue: str) -> str:
    """``asyncjobs:metrics:sampler:<queue>``, under RQ's key prefix when it is not ``rq``
    (docs/rq-protocol.md §13.2), so a hash-tag prefix keeps it in the queues' Cluster slot."""
    return keys.DEFAULT.own(f"metrics:sampler:{queue}")



class QueueSampler:
    """Queue sizes, the oldest queued job's age and the live workers, read from RQ's keys.

    Per queue, one process among every worker serving it holds ``asyncjobs:metrics:sampler:<queue>``
    (under a non-default RQ key prefix ``<prefix>:asyncjobs:metrics:sampler:<queue>``)
    (a ``SET NX PX``-style lock renewed each round) and reads that queue every
    :data:`SAMPLE_INTERVAL` seconds in a daemon thread, with two pipelined round trips; scrapes
    return the last reading and never touch Redis.  Others export nothing for that queue, so a
    sum over instances counts each queue once; if the holder dies its lock expires and another
    process takes over.  A prometheus_client custom collector.
    """

    def __init__(self, connect: Any, queues: Sequence[str], interval: float = SAMPLE_INTERVAL) -> None:
        self._connect = connect  # () -> redis.Redis (sync)
        self.queues = tuple(dict.fromkeys(queues))
        self.interval = interval
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reading: dict[str, Any] = {"queues": {}, "workers": None}
        self._conn: Any = None
        self._next = 0.0

    @property
    def reading(self) -> dict[str, Any]:
        """The last reading (replaced, never changed in place, each round): ``queues`` holds the queues
        this process sampled (the ones whose lock it holds)."""
        return self._reading

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="asyncjobs-queue-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            conn = self._conn or self._connect()
            for q in self.queues:
                conn.eval(lua("sampler_release.lua"), 1, _lock_key(q), self.token)
        except Exception as exc:  # Redis down: the locks expire on their own
            log.debug("could not release the queue-sampler locks: %s", exc)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def tick(self) -> None:
        """Sample now if the last round is ``interval`` old (a supervisor calls this from its own loop:
        it forks children, so it runs no thread that could hold a lock at fork time)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            self.sample_once()
        except Exception as exc:
            log.warning("queue metrics: could not read Redis (%s); trying again in %.0fs", exc, self.interval)
            self._reading = {"queues": {}, "workers": None}
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def sample_once(self, now: float | None = None) -> None:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        ttl_ms = int(self.interval * 3 * 1000) + 1000
        pipe = conn.pipeline(transaction=False)
        for q in self.queues:
            pipe.eval(lua("sampler_lock.lua"), 1, _lock_key(q), self.token, ttl_ms)
        mine = [q for q, held in zip(self.queues, pipe.execute(), strict=True) if held]
        if not mine:
            self._reading = {"queues": {}, "workers": None}
            return
        now = time.time() if now is None else now
        per_queue = {
            z.queue: {"queued": z.queued, "started": z.started, "failed": z.failed, "scheduled": z.scheduled,
                      "deferred": z.deferred, "oldest": z.oldest_age or 0.0}
            for z in read_queue_sizes(conn, mine, now)
        }
        pipe = conn.pipeline(transaction=False)
        for q in mine:
            pipe.smembers(keys.workers_of_queue(q))
        workers = sorted(set().union(*pipe.execute()))
        pipe = conn.pipeline(transaction=False)
        for w in workers:
            pipe.exists(w)  # members are worker keys, rq:worker:<name>
        live = sum(1 for r in (pipe.execute() if workers else []) if r)
        self._reading = {"queues": per_queue, "workers": live, "limits": self._limits(conn, mine, now)}

    @staticmethod
    def _limits(conn: Any, queues: Sequence[str], now: float) -> dict[str, dict[str, float]]:
        """Per sampled queue: jobs running fleet-wide (live leases), paused (0/1), and its limits."""
        from asyncjobs.limits import parse_limits

        limits = parse_limits(conn.hgetall(keys.DEFAULT.queue_limits))
        pipe = conn.pipeline(transaction=False)
        for q in queues:
            pipe.zcount(keys.started(q), now, "+inf")
        out: dict[str, dict[str, float]] = {}
        for q, running in zip(queues, pipe.execute(), strict=True):
            lim = limits.get(q)
            entry = out[q] = {"running": float(running), "paused": 1.0 if lim is not None and lim.paused_at(now) else 0.0}
            if lim is not None and lim.concurrency is not None:
                entry["concurrency"] = float(lim.concurrency)
            if lim is not None and lim.rate is not None:
                entry["rate_per_second"] = lim.rate.count * 1000 / lim.rate.period_ms
        return out

    # prometheus_client's collector protocol
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        reading = self._reading
        sizes = GaugeMetricFamily("asyncjobs_queue_jobs", "Jobs per queue and state (RQ's lists and registries)",
                                  labels=["queue", "state"])
        oldest = GaugeMetricFamily("asyncjobs_queue_oldest_job_age_seconds",
                                   "Age of the oldest job waiting on the queue (0 when empty)", labels=["queue"])
        for q, c in reading["queues"].items():
            for state in ("queued", "started", "failed", "scheduled", "deferred"):
                sizes.add_metric([q, state], float(c[state]))
            oldest.add_metric([q], float(c["oldest"]))
        yield sizes
        yield oldest
        if reading["workers"] is not None:
            yield GaugeMetricFamily("asyncjobs_workers_live", "Live workers registered for the sampled queues",
                                    value=float(reading["workers"]))
        per_queue = reading.get("limits") or {}
        if per_queue:
            running = GaugeMetricFamily("asyncjobs_queue_running", "Jobs of the queue running on all workers "
                                        "(live heartbeat leases: what a concurrency limit counts)", labels=["queue"])
            paused = GaugeMetricFamily("asyncjobs_queue_paused", "1 while the queue is paused (queue limits)",
                                       labels=["queue"])
            limit = GaugeMetricFamily("asyncjobs_queue_limit", "The queue's fleet-wide limits "
                                      "(concurrency; rate_per_second)", labels=["queue", "limit"])
            for q, entry in per_queue.items():
                running.add_metric([q], entry["running"])
                paused.add_metric([q], entry["paused"])
                for name in ("concurrency", "rate_per_second"):
                    if name in entry:
                        limit.add_metric([q, name], entry[name])
            yield running
            yield paused
            yield limit

