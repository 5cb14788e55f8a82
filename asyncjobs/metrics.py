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
from typing import Any

from asyncjobs._extras import missing_extra

__all__ = [
    "STATUSES",
    "cron_tick",
    "declare_queues",
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
    "set_cron_leader",
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
        self.cron_ticks = Counter(
            "asyncjobs_cron_ticks", "Cron ticks this process enqueued as the cron leader (--cron), by cron job",
            ["cron_job"], **kw,
        )
        self.cron_leader = Gauge(
            "asyncjobs_cron_leader", "1 while this process holds the cron leader lease (--cron)",
            multiprocess_mode="livesum", **kw,
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


def declare_queues(queues: tuple[str, ...] | list[str]) -> None:
    """Create ``asyncjobs_jobs_total{queue,status}`` for every queue and status at 0 (and the duration
    histogram's series), so the first failure after a scrape is an increase that ``rate()`` sees."""
    m = _metrics
    if m is None:
        return
    for queue in queues:
        for status in STATUSES:
            m.ended_children(queue, status)


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


def cron_tick(cron_job: str) -> None:
    if _metrics is not None:
        _metrics.cron_ticks.labels(cron_job).inc()


def set_cron_leader(leading: bool) -> None:
    if _metrics is not None:
        _metrics.cron_leader.set(1 if leading else 0)


def delivery(channel: str, result: str) -> None:
    if _metrics is not None:
        _metrics.delivery.labels(channel, result).inc()
