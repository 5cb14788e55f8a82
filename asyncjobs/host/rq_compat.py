"""``rq worker -w asyncjobs.AsyncWorker``: the asyncjobs engine behind RQ's own CLI.

RQ's CLI builds the worker object with its options and calls ``work()``; this
class keeps RQ's constructor (so every option is parsed and validated by RQ)
and replaces ``work()`` with the asyncio engine.  Honoured: queues (in order),
``--burst``, ``--name``, the connection exactly as RQ's CLI built it (``--url``,
``-c`` settings with ``REDIS_URL``/``SENTINEL``/``REDIS_HOST``..., ``REDIS_*`` env), ``--serializer``,
``--results-ttl``, ``--worker-ttl``, ``--job-monitoring-interval``,
``--maintenance-interval``, ``--max-jobs``, ``--max-idle-time``,
``--with-scheduler``, ``--dequeue-strategy``, ``--exception-handler``,
``--disable-default-exception-handler``, ``--disable-job-desc-logging``, ``--logging-level``,
``--log-format`` (a format string), ``--date-format``.  Options RQ's CLI does not have come from
environment variables: ``ASYNCJOBS_CONCURRENCY`` (default 10), ``ASYNCJOBS_LOG_FORMAT=json``
(JSON log lines), ``ASYNCJOBS_ALLOW_MODULES`` (comma-separated, like repeated
``--allow-module``), ``ASYNCJOBS_ALLOW_WEBHOOK_HOSTS`` (comma-separated), ``ASYNCJOBS_MAX_PAYLOAD_SIZE`` (e.g. ``64M``) and ``ASYNCJOBS_HOOKS``
(comma-separated hook modules, like repeated ``--hooks``).  Metrics and health probes:
``ASYNCJOBS_METRICS_PORT``, ``ASYNCJOBS_METRICS_HOST``, ``ASYNCJOBS_HEALTH_PORT``,
``ASYNCJOBS_HEALTH_HOST``, ``ASYNCJOBS_MAX_LOOP_LAG``, in the ``-c`` settings module or the
environment (the settings module wins, as for RQ's own settings).  Per-worker queue caps
(``--queue-limit``): ``QUEUE_LIMITS = {"sms": 5}`` in the settings module or
``ASYNCJOBS_QUEUE_LIMITS=sms=5,emails=20``; fleet-wide limits live in Redis and apply as for any
asyncjobs worker.  The fleet's own jobs: ``ASYNCJOBS_CRON`` (``--cron CONFIG``),
``ASYNCJOBS_CRON_LEASE`` and ``ASYNCJOBS_MAX_MEMORY`` (``--max-memory``, e.g. ``512M``; RQ's own
``--max-jobs`` is honoured as it is).  Round trips: ``ASYNCJOBS_CLAIM_BATCH`` (``--claim-batch``) and
``ASYNCJOBS_PREFETCH`` (``--prefetch``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rq.worker import Worker as RQWorker

from asyncjobs.connection import RedisTarget
from asyncjobs.host.preflight import battery_settings_problem
from asyncjobs.host.runner import run_worker, setup_logging
from asyncjobs.worker.config import (
    DEFAULTS,
    WorkerConfig,
    ops_options,
    parse_memory,
    parse_queue_limit,
    parse_size,
)

_T = TypeVar("_T")
_D = TypeVar("_D")


class AsyncWorker(RQWorker):
    """An ``rq.Worker`` whose ``work()`` runs asyncjobs' concurrent engine."""

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str | None = None,
        log_format: str | None = None,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: str = "default",
        **_: Any,
    ) -> bool:
        from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT

        # rq's --log-format/--date-format (format strings) when changed; RQ's CLI only takes format
        # strings, so JSON lines are asked for with ASYNCJOBS_LOG_FORMAT=json.
        fmt = os.environ.get("ASYNCJOBS_LOG_FORMAT") or (
            "text" if not log_format or log_format == DEFAULT_LOGGING_FORMAT else log_format
        )
        datefmt = None if not date_format or date_format == DEFAULT_LOGGING_DATE_FORMAT else date_format
        try:
            setup_logging(str(logging_level or "INFO"), fmt, datefmt)
            config = self._config(burst, max_jobs, max_idle_time, with_scheduler, dequeue_strategy)
            problem = battery_settings_problem(config.allowed_modules)
            if problem:
                raise ValueError(problem)
            if config.cron:
                from asyncjobs.worker.cron import load_cron_config

                load_cron_config(config.cron)  # a bad file: one line naming the file and line, now
        except ValueError as exc:  # one line naming the value, never a traceback (exit 2, as argparse)
            print(f"asyncjobs: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        self._warn_about_classes()
        code = run_worker(config)
        if code in (2, 75):  # a configuration error (e.g. Redis refused the database), or recycled (--max-memory)
            raise SystemExit(code)
        return code == 0

    def _warn_about_classes(self) -> None:
        """RQ's CLI built this worker with its --job-class/--queue-class; asyncjobs reads and writes the
        Redis format itself, so a custom class's overrides never run: say so once."""
        import logging

        from rq.job import Job
        from rq.queue import Queue

        for flag, given, stock in (("--job-class", self.job_class, Job), ("--queue-class", self.queue_class, Queue)):
            if given is not None and given is not stock:
                logging.getLogger("asyncjobs").warning(
                    "%s %s.%s is not used: asyncjobs reads and writes RQ's Redis format itself, so the class's "
                    "overrides do not run (use stock rq worker for queues that need them)",
                    flag, given.__module__, given.__qualname__,
                )

    def _config(
        self, burst: bool, max_jobs: int | None, max_idle_time: int | None, with_scheduler: bool, dequeue_strategy: str
    ) -> WorkerConfig:
        handlers = tuple(
            f"{h.__module__}.{h.__qualname__}" for h in (self._exc_handlers or []) if hasattr(h, "__qualname__")
        )
        ser = self.serializer if isinstance(self.serializer, type) else type(self.serializer)
        spec = f"{ser.__module__}.{ser.__qualname__}"
        limits, limits_source = _queue_limits()
        try:
            return self._build_config(burst, max_jobs, max_idle_time, with_scheduler, dequeue_strategy, handlers,
                                      spec, limits)
        except ValueError as exc:
            if str(exc).startswith("--queue-limit") and limits_source:
                raise ValueError(f"{limits_source}: {exc}") from None
            raise

    def _build_config(
        self, burst: bool, max_jobs: int | None, max_idle_time: int | None, with_scheduler: bool,
        dequeue_strategy: str, handlers: tuple[str, ...], spec: str, limits: tuple[tuple[str, int], ...],
    ) -> WorkerConfig:
        return WorkerConfig(
            queues=tuple(q.name for q in self.queues),
            # RQ's own connection as its CLI built it (--url, -c settings incl. SENTINEL, REDIS_* env).
            redis=RedisTarget.from_client(self.connection),
            name=self.name,
            concurrency=_env("ASYNCJOBS_CONCURRENCY", _positive_int, DEFAULTS["concurrency"],
                             f"is not a positive whole number: set e.g. ASYNCJOBS_CONCURRENCY={DEFAULTS['concurrency']}"),
            burst=burst,
            serializer=spec,
            default_result_ttl=int(self.default_result_ttl),
            worker_ttl=int(self.worker_ttl),
            job_monitoring_interval=float(self.job_monitoring_interval),
            maintenance_interval=float(self.maintenance_interval.total_seconds())
            if hasattr(self.maintenance_interval, "total_seconds") else float(self.maintenance_interval),
            max_jobs=max_jobs,
            max_idle_time=float(max_idle_time) if max_idle_time else None,
            dequeue_strategy=dequeue_strategy,  # type: ignore[arg-type]
            with_scheduler=with_scheduler,
            exception_handlers=handlers,
            disable_default_exception_handler=bool(self.disable_default_exception_handler),
            log_job_description=bool(getattr(self, "log_job_description", True)),
            allowed_modules=tuple(
                m.strip() for m in os.environ.get("ASYNCJOBS_ALLOW_MODULES", "").split(",") if m.strip()
            ),
            allow_webhook_hosts=tuple(
                h.strip() for h in os.environ.get("ASYNCJOBS_ALLOW_WEBHOOK_HOSTS", "").split(",") if h.strip()
            ),
            hooks=tuple(h.strip() for h in os.environ.get("ASYNCJOBS_HOOKS", "").split(",") if h.strip()),
            max_payload_size=parse_size(
                os.environ.get("ASYNCJOBS_MAX_PAYLOAD_SIZE", str(DEFAULTS["max_payload_size"])),
                "ASYNCJOBS_MAX_PAYLOAD_SIZE",
            ),
            queue_limits=limits,
            cron=os.environ.get("ASYNCJOBS_CRON") or None,
            cron_lease=_env("ASYNCJOBS_CRON_LEASE", float, DEFAULTS["cron_lease"], "is not a number of seconds: "
                            f"set e.g. ASYNCJOBS_CRON_LEASE={DEFAULTS['cron_lease']:g}"),
            max_memory=_env("ASYNCJOBS_MAX_MEMORY", parse_memory, None,
                            "is not a size: set e.g. ASYNCJOBS_MAX_MEMORY=512M"),
            claim_batch=_env("ASYNCJOBS_CLAIM_BATCH", _positive_int, None,
                             "is not a positive whole number: set e.g. ASYNCJOBS_CLAIM_BATCH=8, or leave it unset"),
            prefetch=_env("ASYNCJOBS_PREFETCH", _int_from(0), None,
                          "is not a whole number: set e.g. ASYNCJOBS_PREFETCH=0 (never), or leave it unset (automatic)"),
            **ops_options({}, _rq_settings(), os.environ),
        )

    def __repr__(self) -> str:
        return f"AsyncWorker({self.name!r})"


def _env(name: str, parse: Callable[[str], _T], default: _D, fix: str) -> _T | _D:
    """``$name`` parsed, ``default`` when unset or empty (a value that parses, 0 included, is kept for
    WorkerConfig to check); a value that does not parse is one line naming it and ``fix``."""
    text = (os.environ.get(name) or "").strip()
    if not text:
        return default
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} {fix}") from None


def _int_from(low: int) -> Callable[[str], int]:
    """A parser of whole numbers of at least ``low`` (ValueError otherwise)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value

    return parse


_positive_int = _int_from(1)


def _queue_limits() -> tuple[tuple[tuple[str, int], ...], str]:
    """``--queue-limit`` under RQ's CLI: ``QUEUE_LIMITS = {"sms": 5}`` in the ``-c`` settings module, else
    ``ASYNCJOBS_QUEUE_LIMITS=sms=5,emails:*=2`` in the environment; and where they came from."""
    configured = (_rq_settings() or {}).get("QUEUE_LIMITS")
    if configured:
        if not isinstance(configured, dict):
            raise ValueError(f"QUEUE_LIMITS in the settings module must be a dict {{queue: N}}, got {configured!r}")
        return tuple((str(q), n) for q, n in configured.items()), "QUEUE_LIMITS in the settings module"
    text = os.environ.get("ASYNCJOBS_QUEUE_LIMITS") or ""
    limits = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            limits.append(parse_queue_limit(part))
        except ValueError:
            raise ValueError(
                f"$ASYNCJOBS_QUEUE_LIMITS={text!r}: {part!r} is not QUEUE=N with N >= 1; "
                "set e.g. ASYNCJOBS_QUEUE_LIMITS=sms=5,emails=20"
            ) from None
    return tuple(limits), f"$ASYNCJOBS_QUEUE_LIMITS={text!r}" if limits else ""


def _rq_settings() -> dict[str, Any] | None:
    """The UPPERCASE names of the ``-c`` settings module RQ's CLI was given (from its click
    context, else ``$RQ_CONFIG``), if any: RQ itself already imported it."""
    import importlib

    try:
        import click

        ctx = click.get_current_context(silent=True)
    except ImportError:
        ctx = None
    module = (ctx.params.get("config") if ctx is not None else None) or os.environ.get("RQ_CONFIG")
    if not module:
        return None
    return {k: v for k, v in vars(importlib.import_module(str(module))).items() if k.isupper()}


__all__ = ["AsyncWorker"]
