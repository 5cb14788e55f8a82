"""``rq worker -w asyncjobs.AsyncWorker``: the asyncjobs engine behind RQ's own CLI.

RQ's CLI builds the worker object with its options and calls ``work()``; this
class keeps RQ's constructor (so every option is parsed and validated by RQ)
and replaces ``work()`` with the asyncio engine.  Honoured: queues (in order),
``--burst``, ``--name``, ``--url``/connection, ``--serializer``,
``--results-ttl``, ``--worker-ttl``, ``--job-monitoring-interval``,
``--maintenance-interval``, ``--max-jobs``, ``--max-idle-time``,
``--with-scheduler``, ``--dequeue-strategy``, ``--exception-handler``,
``--disable-default-exception-handler``, ``--logging-level``.  Concurrency comes
from the ``ASYNCJOBS_CONCURRENCY`` environment variable (default 10), since
RQ's CLI has no such option.
"""

from __future__ import annotations

import os
from typing import Any

from rq.worker import Worker as RQWorker

from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.runner import run_worker, setup_logging


def _redis_url(connection: Any) -> str:
    kw = connection.connection_pool.connection_kwargs
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    scheme = "rediss" if connection.connection_pool.connection_class.__name__.startswith("SSL") else "redis"
    auth = ""
    if kw.get("password"):
        from urllib.parse import quote

        auth = f"{quote(kw.get('username') or '')}:{quote(kw['password'])}@"
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


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
        setup_logging(str(logging_level or "INFO"))
        handlers = tuple(
            f"{h.__module__}.{h.__qualname__}" for h in (self._exc_handlers or []) if hasattr(h, "__qualname__")
        )
        ser = self.serializer if isinstance(self.serializer, type) else type(self.serializer)
        spec = f"{ser.__module__}.{ser.__qualname__}"
        config = WorkerConfig(
            queues=tuple(q.name for q in self.queues),
            redis_url=_redis_url(self.connection),
            name=self.name,
            concurrency=int(os.environ.get("ASYNCJOBS_CONCURRENCY", "10")),
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
        )
        return run_worker(config) == 0

    def __repr__(self) -> str:
        return f"AsyncWorker({self.name!r})"


__all__ = ["AsyncWorker"]
