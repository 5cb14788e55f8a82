"""The engine's reporting points, and the few numbers per process that health probes read.

* :class:`Observer`: the worker calls it at a few points (job began / started running / ended,
  registered, draining); it forwards to :mod:`asyncjobs.metrics` (no-ops unless enabled) and
  writes the process's :class:`Slot` of the :class:`HealthBoard`.
* :class:`HealthBoard`: a few numbers per worker process in shared memory (event-loop heartbeat,
  registered, draining, pid).  A ``--processes`` supervisor creates it before forking, so its
  endpoints see every child; a single worker uses a board of one.

The HTTP side (the probes' server, the loop watchdog thread) is the host's: :mod:`asyncjobs.host.probes`.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from multiprocessing.sharedctypes import RawArray
from typing import Any

from asyncjobs import metrics
from asyncjobs.hooks import JOB_STATUS
from asyncjobs.protocol.transitions import Kind

__all__ = ["LOOP_BEAT_INTERVAL", "HealthBoard", "Observer", "Slot"]

#: The event loop writes its heartbeat this often.
LOOP_BEAT_INTERVAL = 0.25
_FIELDS = 4  # beat (monotonic seconds), registered, draining, pid


class Slot:
    """One worker process's health numbers (shared memory when on a supervisor's board)."""

    __slots__ = ("_arr", "_base")

    def __init__(self, arr: Any, index: int) -> None:
        self._arr = arr
        self._base = index * _FIELDS

    @property
    def beat(self) -> float:
        return float(self._arr[self._base])

    @beat.setter
    def beat(self, value: float) -> None:
        self._arr[self._base] = value

    @property
    def registered(self) -> bool:
        return bool(self._arr[self._base + 1])

    @registered.setter
    def registered(self, value: bool) -> None:
        self._arr[self._base + 1] = 1.0 if value else 0.0

    @property
    def draining(self) -> bool:
        return bool(self._arr[self._base + 2])

    @draining.setter
    def draining(self, value: bool) -> None:
        self._arr[self._base + 2] = 1.0 if value else 0.0

    @property
    def pid(self) -> int:
        return int(self._arr[self._base + 3])

    @pid.setter
    def pid(self, value: int) -> None:
        self._arr[self._base + 3] = float(value)

    def reset(self) -> None:
        for i in range(_FIELDS):
            self._arr[self._base + i] = 0.0


class HealthBoard:
    """``n`` slots of shared memory, inherited by forked children (no locks: each field has one writer)."""

    def __init__(self, n: int) -> None:
        self._arr = RawArray("d", n * _FIELDS)
        self.slots = [Slot(self._arr, i) for i in range(n)]


class Observer:
    """The worker's reporting points; cheap when metrics are off and no board is given."""

    def __init__(self, slot: Slot | None = None, *, metrics_on: bool = False) -> None:
        self.slot = slot
        self.metrics_on = metrics_on
        #: jobs between job_began and job_ended; published by monitor_loop (4 times a second), not per job
        self.in_flight = 0

    @property
    def monitors_loop(self) -> bool:
        return self.slot is not None or self.metrics_on

    # -- lifecycle
    def registered(self, concurrency: int) -> None:
        if self.metrics_on:
            metrics.set_concurrency(concurrency)
        if self.slot is not None:
            self.slot.pid = os.getpid()
            self.slot.registered = True

    def draining(self) -> None:
        if self.slot is not None:
            self.slot.draining = True

    def recycled(self, reason: str) -> None:
        """The worker recycles itself (``--max-jobs``/``--max-memory``: ``reason`` max_jobs, max_memory)."""
        if self.metrics_on:
            metrics.recycled(reason)

    def throttled(self, queue: str) -> None:
        """A job raised :class:`asyncjobs.Throttled`: its queue is paused."""
        if self.metrics_on:
            metrics.throttled(queue)

    def stopped(self) -> None:
        if self.metrics_on:
            metrics.set_concurrency(0)
        if self.slot is not None:
            self.slot.registered = False

    # -- per job (the hot path: a couple of dict lookups and counter increments)
    def job_began(self) -> None:
        self.in_flight += 1

    def job_running(self, queue: str, enqueued_at: datetime | None, started: datetime) -> None:
        if self.metrics_on and enqueued_at is not None:
            metrics.job_delay(queue, (started - enqueued_at).total_seconds())

    def job_ended(self, queue: str, kind: Kind, duration: float) -> None:
        """Every job :meth:`job_began` ends here once; a job given back is not timed."""
        self.in_flight -= 1
        if self.metrics_on:
            metrics.job_ended(queue, JOB_STATUS[kind], None if kind is Kind.REQUEUE else duration)

    async def monitor_loop(self, stop: asyncio.Event) -> None:
        """Write the loop heartbeat and measure how late the loop wakes up."""
        slot = self.slot
        try:
            while not stop.is_set():
                t = time.monotonic()
                if slot is not None:
                    slot.beat = t
                await asyncio.sleep(LOOP_BEAT_INTERVAL)
                if self.metrics_on:
                    metrics.set_loop_lag(max(0.0, time.monotonic() - t - LOOP_BEAT_INTERVAL))
                    metrics.set_in_flight(self.in_flight)
        finally:
            if slot is not None:
                slot.beat = 0.0  # the worker is done: nothing left to watch
            if self.metrics_on:
                metrics.set_in_flight(self.in_flight)
