"""Prometheus metrics (optional extra ``[metrics]``): every function is a no-op until :func:`enable`.

The worker (through its observer) and the delivery tasks both report here; neither imports
the other.  ``prometheus_client`` is imported only by :func:`enable`, which the worker calls
when started with ``--metrics-port``: without it, nothing here needs the package.

Metric names (docs: README "Operating asyncjobs")::

    asyncjobs_jobs_total{queue,status}          finished | failed | stopped | retried | requeued
    asyncjobs_job_duration_seconds{queue}       histogram of execution time
    asyncjobs_job_start_delay_seconds{queue}    histogram of enqueued_at -> started
    asyncjobs_jobs_in_flight                    jobs executing now
    asyncjobs_concurrency_limit                 --concurrency (summed over processes)
    asyncjobs_event_loop_lag_seconds            how late the event loop runs (max over processes)
    asyncjobs_redis_errors_total                failed Redis calls the worker backed off from
    asyncjobs_delivery_total{channel,result}    email / sms: sent | rejected | exhausted | error
    asyncjobs_queue_jobs{queue,state}           queued | started | failed | scheduled | deferred
    asyncjobs_queue_oldest_job_age_seconds{queue}
    asyncjobs_workers_live                      live workers registered for the sampled queues

The last three are sampled by one process per queue (a Redis lock, see :class:`QueueSampler`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from asyncjobs._extras import missing_extra

__all__ = [
    "STATUSES",
    "QueueSampler",
    "delivery",
    "enable",
    "enabled",
    "exposition",
    "job_delay",
    "job_ended",
    "mark_process_dead",
    "new_registry",
    "preload",
    "recycled",
    "redis_error",
    "set_concurrency",
    "set_in_flight",
    "set_loop_lag",
    "throttled",
]

log = logging.getLogger("asyncjobs.metrics")

STATUSES = ("finished", "failed", "stopped", "retried", "requeued")
#: Seconds; jobs range from a millisecond (a Redis write) to minutes (a report).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
START_DELAY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise missing_extra("metrics", "--metrics-port (asyncjobs.metrics)", exc) from exc
    return prometheus_client


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        kw: dict[str, Any] = {"registry": registry}
        self.jobs = Counter("asyncjobs_jobs", "Jobs that ended, by queue and status", ["queue", "status"], **kw)
        self.duration = Histogram(
            "asyncjobs_job_duration_seconds", "Time jobs took to run", ["queue"], buckets=DURATION_BUCKETS, **kw
        )
        self.start_delay = Histogram(
            "asyncjobs_job_start_delay_seconds", "Time from enqueued_at until a worker started the job",
            ["queue"], buckets=START_DELAY_BUCKETS, **kw,
        )
        self.in_flight = Gauge("asyncjobs_jobs_in_flight", "Jobs executing now", multiprocess_mode="livesum", **kw)
        self.concurrency = Gauge(
            "asyncjobs_concurrency_limit", "Jobs that may run at once (--concurrency)", multiprocess_mode="livesum", **kw
        )
        self.loop_lag = Gauge(
            "asyncjobs_event_loop_lag_seconds", "How late the event loop runs its timers",
            multiprocess_mode="livemax", **kw,
        )
        self.redis_errors = Counter("asyncjobs_redis_errors", "Redis calls that failed and were retried", **kw)
        self.delivery = Counter(
            "asyncjobs_delivery", "Email/SMS deliveries by channel and result", ["channel", "result"], **kw
        )
        self.recycles = Counter(
            "asyncjobs_worker_recycles", "Worker processes recycled (--max-jobs, --max-memory), by reason",
            ["reason"], **kw,
        )
        self.throttled = Counter(
            "asyncjobs_queue_throttled", "Jobs that raised asyncjobs.Throttled (their queue paused), by queue",
            ["queue"], **kw,
        )
        self._lock = threading.Lock()
        # Labelled children cached per queue: no label lookups (and their lock) per job.
        self._started: dict[str, Any] = {}
        self._ended: dict[tuple[str, str], tuple[Any, Any]] = {}

    def started_child(self, queue: str) -> Any:
        child = self._started.get(queue)
        if child is None:
            with self._lock:
                child = self._started[queue] = self.start_delay.labels(queue)
        return child

    def ended_children(self, queue: str, status: str) -> tuple[Any, Any]:
        pair = self._ended.get((queue, status))
        if pair is None:
            with self._lock:
                pair = self._ended[(queue, status)] = (self.jobs.labels(queue, status), self.duration.labels(queue))
        return pair


_metrics: _Metrics | None = None
_enable_lock = threading.Lock()


def enabled() -> bool:
    return _metrics is not None


def enable(*, multiprocess_dir: str | None = None) -> Any:
    """Create the metrics (idempotent); returns the registry to serve, or None in multiprocess
    mode (values go to files in ``multiprocess_dir``, the supervisor serves them)."""
    global _metrics
    prom = _import_prometheus()
    with _enable_lock:
        if _metrics is not None:
            return None if multiprocess_dir else prom.REGISTRY
        if multiprocess_dir:
            from prometheus_client import values

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
            # Values live in mmap files even when prometheus_client was imported before the
            # variable was set (it reads it only at import).
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            _metrics = _Metrics(None)
            return None
        _metrics = _Metrics(prom.REGISTRY)
        return prom.REGISTRY


def new_registry(multiprocess_dir: str | None) -> Any:
    """A registry for a serving process: the children's files (multiprocess) or the default one."""
    prom = _import_prometheus()
    if multiprocess_dir is None:
        return prom.REGISTRY
    from prometheus_client import multiprocess

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return registry


def exposition(registry: Any, accept: str) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for: (body, content type)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def mark_process_dead(pid: int, multiprocess_dir: str) -> None:
    """A supervisor's child died: drop its live gauges (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, multiprocess_dir)  # type: ignore[no-untyped-call]


def preload() -> None:
    """Import what serving needs now, not from a server thread while the supervisor forks."""
    import prometheus_client.exposition
    import prometheus_client.multiprocess  # noqa: F401


# ------------------------------------------------------------------ reporting (no-ops when disabled)


def set_in_flight(jobs: int) -> None:
    """Jobs in flight now (the worker publishes its count a few times a second, not per job)."""
    if _metrics is not None:
        _metrics.in_flight.set(jobs)


def job_delay(queue: str, seconds: float) -> None:
    """The job started ``seconds`` after it was enqueued."""
    if _metrics is not None:
        _metrics.started_child(queue).observe(max(0.0, seconds))


def job_ended(queue: str, status: str, duration: float | None) -> None:
    """``duration`` None: the job never ran (given back at shutdown before it started)."""
    m = _metrics
    if m is None:
        return
    count, hist = m.ended_children(queue, status)
    count.inc()
    if duration is not None:
        hist.observe(duration)


def set_concurrency(value: int) -> None:
    if _metrics is not None:
        _metrics.concurrency.set(value)


def set_loop_lag(seconds: float) -> None:
    if _metrics is not None:
        _metrics.loop_lag.set(seconds)


def redis_error() -> None:
    if _metrics is not None:
        _metrics.redis_errors.inc()


def recycled(reason: str) -> None:
    if _metrics is not None:
        _metrics.recycles.labels(reason).inc()


def throttled(queue: str) -> None:
    if _metrics is not None:
        _metrics.throttled.labels(queue).inc()


def delivery(channel: str, result: str) -> None:
    if _metrics is not None:
        _metrics.delivery.labels(channel, result).inc()


# ------------------------------------------------------------------ queue sizes, sampled by one process

#: Renew the lock, then read the queues, at this period; the lock outlives three missed rounds.
SAMPLE_INTERVAL = 10.0


def _lock_key(queue: str) -> str:
    """``asyncjobs:metrics:sampler:<queue>``, under RQ's key prefix when it is not ``rq``
    (docs/rq-protocol.md §13.2), so a hash-tag prefix keeps it in the queues' Cluster slot."""
    from asyncjobs.protocol import keys

    return keys.DEFAULT.own(f"metrics:sampler:{queue}")

# Take the lock if free, or keep it if it is ours; 1 = we sample this queue.
_LOCK_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
                conn.eval(_RELEASE_SCRIPT, 1, _lock_key(q), self.token)
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
        from asyncjobs.protocol import keys
        from asyncjobs.protocol.queuestats import read_queue_sizes

        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        ttl_ms = int(self.interval * 3 * 1000) + 1000
        pipe = conn.pipeline(transaction=False)
        for q in self.queues:
            pipe.eval(_LOCK_SCRIPT, 1, _lock_key(q), self.token, ttl_ms)
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
        from asyncjobs.protocol import keys

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

