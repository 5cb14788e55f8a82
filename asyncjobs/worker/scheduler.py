"""``--with-scheduler``: moves due scheduled jobs onto their queues.

This drives RQ's own ``RQScheduler`` (its lock key, lock script, TTL and
metadata hash) in a thread, once a second, so it never double-enqueues beside
stock schedulers: whichever process holds ``rq:scheduler-lock:<q>`` schedules
that queue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asyncjobs.backoff import wait_or
from asyncjobs.connection import RedisTarget

log = logging.getLogger("asyncjobs.worker")


class Scheduler:
    def __init__(
        self, target: RedisTarget | str, queues: tuple[str, ...], serializer: Any = None, interval: float = 1.0
    ) -> None:
        self.target = RedisTarget(url=target) if isinstance(target, str) else target
        self.queues = queues
        self.serializer = serializer
        self.interval = interval
        self._scheduler: Any = None
        self._registered = False

    def _get(self) -> Any:
        if self._scheduler is None:
            from rq.scheduler import RQScheduler

            conn = self.target.sync_client()
            self._scheduler = RQScheduler(list(self.queues), connection=conn, serializer=self.serializer)
            self._scheduler._connection = conn
        return self._scheduler

    def tick_once(self) -> None:
        sched = self._get()
        if sched.should_reacquire_locks:
            sched.acquire_locks()
        if sched.acquired_locks:
            if not self._registered:
                sched.register_birth()
                self._registered = True
            sched.heartbeat()
            sched.enqueue_scheduled_jobs()

    def stop(self) -> None:
        if self._scheduler is not None:
            try:
                if self._registered:
                    self._scheduler.stop()
                else:
                    self._scheduler.release_locks()
            finally:
                self._scheduler.connection.close()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.tick_once)
                except Exception as exc:
                    log.warning("scheduler tick failed (%s); retrying", exc)
                await wait_or(stop, self.interval)
        finally:
            await asyncio.to_thread(self.stop)
