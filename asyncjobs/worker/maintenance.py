"""Registry maintenance, exactly as stock RQ does it, on RQ's own code.

Every ``maintenance_interval`` (600 s; first run at start-up) and under RQ's
``rq:clean_registries:<q>`` lock, for each queue: expired finished/failed
entries, abandoned started jobs (retried if retries are left, else failed with
``AbandonedJobError``), dead workers, and intermediate-list leftovers.  The
work runs in a thread on a synchronous connection, with RQ's own functions, so
its semantics are stock's by construction; a job abandoned by any worker,
stock or asyncjobs, is recovered the same way.  Under RQ 3 that includes what
3.0's maintenance adds (docs/rq-protocol.md §13.7): ready dependents left by a
crash are enqueued, leaked rate-limit slots are released (and abandoned
rate-limited jobs give theirs back), ``failed`` webhooks of abandoned jobs are
sent, and groups are cleaned only under RQ 3's ``<prefix>:clean_groups`` lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from asyncjobs.backoff import wait_or
from asyncjobs.protocol.serializers import Serializer
from asyncjobs.worker import webhooks
from asyncjobs.worker.config import WorkerConfig

log = logging.getLogger("asyncjobs.worker")


class Maintenance:
    def __init__(
        self,
        config: WorkerConfig,
        serializer: Serializer,
        exception_handlers: Sequence[Callable[..., Any]] = (),
        *,
        queues: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        """``queues``: the queues to clean, asked each pass (default: ``config.queues``; a worker with
        queue patterns passes the queues they match now)."""
        self.config = config
        self._queues = queues or (lambda: config.queues)
        self.serializer = serializer
        self.exception_handlers = list(exception_handlers)  # as stock: called for each abandoned job
        self.webhook_policy = webhooks.WebhookPolicy(config.allow_webhook_hosts, bool(config.allowed_modules))
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.config.connection.sync_client()
        return self._conn

    def run_once(self, worker_name: str) -> None:
        from rq import Queue, worker_registration
        from rq.group import Group
        from rq.registry import clean_registries
        from rq.worker import SimpleWorker

        conn = self._connection()
        queues = [Queue(q, connection=conn, serializer=self.serializer) for q in self._queues()]
        # A stock worker object under *our* name, never registered: RQ's intermediate-queue
        # cleanup calls its handle_job_failure for jobs stuck there.
        shim = SimpleWorker(queues, connection=conn, name=worker_name, serializer=self.serializer)
        for queue in queues:
            if queue.acquire_maintenance_lock():
                try:
                    log.info("cleaning registries for queue %s", queue.name)
                    # RQ 3 sends abandoned jobs' `failed` webhooks from here: under the worker's webhook rules
                    with webhooks.policy_for_rq_code(self.webhook_policy):
                        clean_registries(queue, self.exception_handlers)
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(shim, queue)
                finally:
                    queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        # RQ 3: one worker per maintenance window cleans the groups, under <prefix>:clean_groups.
        group_lock = getattr(Group, "acquire_maintenance_lock", None)  # None under RQ 2.12
        if group_lock is None or group_lock(conn, max(int(self.config.maintenance_interval) - 1, 1)):
            Group.clean_registries(connection=conn)

    async def run(self, stop: asyncio.Event, worker_name: str | None = None, *, first_done: bool = False) -> None:
        """Every ``maintenance_interval`` until ``stop``; the first pass at once unless ``first_done``."""
        name = worker_name or "asyncjobs-maintenance"
        if first_done:
            await wait_or(stop, self.config.maintenance_interval)
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.run_once, name)
            except Exception as exc:
                log.warning("maintenance pass failed (%s); will retry next interval", exc)
            await wait_or(stop, self.config.maintenance_interval)
        if self._conn is not None:
            self._conn.close()
