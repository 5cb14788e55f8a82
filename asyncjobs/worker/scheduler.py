"""``--with-scheduler``: moves due scheduled jobs onto their queues.

This drives RQ's own ``RQScheduler`` (its lock key, lock script and
metadata hash) in a thread, once a second, so it never double-enqueues beside
stock schedulers: whichever process holds ``rq:scheduler-lock:<q>`` schedules
that queue.

Two differences make a killed scheduler's queues move on within seconds (stock: its lock lives
61 s and the others retry every 120 s, so scheduled jobs and retry delays stalled about two
minutes after a SIGKILL): a lock this process holds is given :data:`LOCK_TTL` seconds (renewed
every tick), and queues whose lock another process holds are tried again every
:data:`REACQUIRE_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from asyncjobs.backoff import wait_or
from asyncjobs.connection import RedisTarget
from asyncjobs.protocol.scripts import lua

log = logging.getLogger("asyncjobs.worker")

#: Seconds a scheduler lock held by this process lives without renewal (renewed every tick).
LOCK_TTL = 10
#: Seconds between attempts at the locks of queues another scheduler holds.
REACQUIRE_EVERY = 2.0


def _fixed(queues: tuple[str, ...]) -> Callable[[], Sequence[str]]:
    return lambda: queues


class Scheduler:
    def __init__(
        self,
        target: RedisTarget | str,
        queues: Sequence[str] | Callable[[], Sequence[str]],
        serializer: Any = None,
        interval: float = 1.0,
    ) -> None:
        self.target = RedisTarget(url=target) if isinstance(target, str) else target
        #: the queues to schedule, or a function giving them now (queue patterns: the queues they match
        #: change while the worker runs, and each tick follows them)
        self.queues: Callable[[], Sequence[str]] = queues if callable(queues) else _fixed(tuple(queues))
        self.serializer = serializer
        self.interval = interval
        self._scheduler: Any = None
        self._registered = False
        self._last_try = 0.0

    def _get(self) -> Any:
        if self._scheduler is None:
            from rq.scheduler import RQScheduler

            conn = self.target.sync_client()
            self._scheduler = RQScheduler(list(self.queues()), connection=conn, serializer=self.serializer)
            self._scheduler._connection = conn
        return self._scheduler

    def tick_once(self) -> None:
        sched = self._get()
        now = time.monotonic()
        current = set(self.queues())
        if current and current != sched._queue_names:  # a pattern matched a new queue: take its lock too
            sched._queue_names = current
            self._last_try = 0.0
        missing = set(sched._queue_names) != set(sched.acquired_locks)
        if sched.should_reacquire_locks or (missing and now - self._last_try >= REACQUIRE_EVERY):
            self._last_try = now
            sched.acquire_locks()
        if sched.acquired_locks:
            if not self._registered:
                sched.register_birth()
                self._registered = True
            sched.heartbeat()
            for name in sorted(sched.acquired_locks):  # RQ gives them interval + 60 s
                sched.connection.eval(lua("scheduler_lock_ttl.lua"), 1, sched.get_locking_key(name), sched.name, LOCK_TTL)
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
