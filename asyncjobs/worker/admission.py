"""Admission under ``--concurrency``: the jobs in flight and the slots they hold.

A slot is taken when a job is claimed and freed only once its outcome is
stored (so a parent's dependents, or a retry, are on their queue before the
worker fetches again, as with a stock worker).  ``--prefetch`` adds slots for
jobs claimed ahead: the :class:`Gate` lets at most ``--concurrency`` of the
claimed jobs execute, and hands a place to the oldest waiting one the moment
an execution ends, with no round trip to Redis in between.  Jobs to give back at shutdown
are held here until none of them is still ending, then released together,
last claimed first: each is pushed to the front of its queue, so they end up
in their original order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from asyncjobs.protocol.transitions import Transition

if TYPE_CHECKING:
    from asyncjobs.worker.job import JobRun

__all__ = ["CancelReason", "Gate", "GiveBack", "Slots"]


class CancelReason(StrEnum):
    STOP = "stop"  # send_stop_job_command: ends `stopped`
    KILL = "kill"  # send_kill_horse_command: ends failed, as a killed work-horse
    TIMEOUT = "timeout"  # the job's timeout: ends failed with RQ's timeout message (or retried)
    GIVE_BACK = "give_back"  # shutdown: back on its queue, unfinished


@dataclass(frozen=True, slots=True)
class GiveBack:
    """A job to put back on its queue, with its slot to free once that is stored."""

    item: JobRun
    outcome: Transition


class Slots:
    """The jobs in flight, keyed by ``<job id>:<execution id>``, against the concurrency limit."""

    def __init__(self, concurrency: int, max_jobs: int | None) -> None:
        self.concurrency = concurrency
        #: slots for jobs claimed ahead of a free one (``--prefetch``; the worker sets it)
        self.prefetch = 0
        self.max_jobs = max_jobs
        self.started = 0  # jobs admitted so far
        self.returned = 0  # of those, given back without starting (``--max-jobs`` counts the others)
        #: set whenever a slot frees or an outcome is ready: wakes the fetch loop
        self.freed = asyncio.Event()
        self._inflight: dict[str, JobRun] = {}
        self._held: list[GiveBack] = []

    def __len__(self) -> int:
        return len(self._inflight)

    def __iter__(self) -> Iterator[JobRun]:
        return iter(list(self._inflight.values()))

    def free(self, finishing: int = 0) -> int:
        """Slots to claim for; ``finishing`` outcomes are stored in the same call, freeing theirs."""
        free = self.concurrency + self.prefetch - len(self._inflight) + finishing
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.started + self.returned)
        return max(free, 0)

    @property
    def max_jobs_reached(self) -> bool:
        return self.max_jobs is not None and self.started - self.returned >= self.max_jobs

    def admit(self, make: Callable[[int], JobRun]) -> JobRun:
        """Take a slot for the run ``make(seq)`` builds (``seq``: its claim order)."""
        self.started += 1
        run = make(self.started)
        self._inflight[run.key] = run
        return run

    def release(self, item: JobRun) -> None:
        """The outcome is stored: the slot is free."""
        self._inflight.pop(item.key, None)
        self.freed.set()

    def executing(self) -> list[JobRun]:
        """Jobs still executing (not those only waiting for their outcome to be stored)."""
        return [i for i in self._inflight.values() if i.executing]

    def hold_give_back(self, item: JobRun, outcome: Transition) -> None:
        self._held.append(GiveBack(item, outcome))

    def give_backs_ready(self, force: bool = False) -> list[GiveBack]:
        """The held give-backs, last claimed first, once no job being given back is still ending
        (``force``: now, whatever still runs); empty until then."""
        if not self._held:
            return []
        held_keys = {g.item.key for g in self._held}
        if not force and any(
            i.cancel_reason is CancelReason.GIVE_BACK and i.executing and i.key not in held_keys
            for i in self._inflight.values()
        ):
            return []
        held, self._held = self._held, []
        return sorted(held, key=lambda g: g.item.seq, reverse=True)


class Gate:
    """At most ``limit`` runs past it at once; the others wait in arrival (claim) order.

    :meth:`leave` hands the place straight to the oldest waiting run.  A run cancelled while it waits
    (stop-job, a give-back at shutdown) is let through at once: it ends without running the job.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inside = 0
        self.left = 0  # runs that have left so far (their slots freed for the next)
        self._waiting: deque[asyncio.Future[bool]] = deque()

    async def enter(self, run: JobRun, stale: float, on_stale: Callable[[JobRun], None]) -> None:
        """Past the gate now, or once a place is handed over; ``on_stale(run)`` if it has waited
        ``stale`` seconds by then (it may cancel the run, which lets it through)."""
        if run.cancel_reason is not None or (self.inside < self.limit and not self._waiting):
            self.inside += 1
            return
        loop = asyncio.get_running_loop()
        place: asyncio.Future[bool] = loop.create_future()
        self._waiting.append(place)
        run.waiting = place
        timer = loop.call_later(stale, on_stale, run)
        try:
            handed = await place
        finally:
            timer.cancel()
            run.waiting = None
        if not handed:  # woken by a cancel, not handed a place by leave()
            self.inside += 1

    def leave(self) -> None:
        self.inside -= 1
        self.left += 1
        while self._waiting and self.inside < self.limit:
            place = self._waiting.popleft()
            if not place.done():
                place.set_result(True)
                self.inside += 1
