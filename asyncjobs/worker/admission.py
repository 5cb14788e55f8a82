"""Admission under ``--concurrency``: the jobs in flight and the slots they hold.

A slot is taken when a job is claimed and freed only once its outcome is
stored (so a parent's dependents, or a retry, are on their queue before the
worker fetches again, as with a stock worker).  Jobs to give back at shutdown
are held here until none of them is still ending, then released together,
last claimed first: each is pushed to the front of its queue, so they end up
in their original order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from asyncjobs.protocol.transitions import Transition

if TYPE_CHECKING:
    from asyncjobs.worker.job import JobRun

__all__ = ["CancelReason", "GiveBack", "Slots"]


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
        self.max_jobs = max_jobs
        self.started = 0  # jobs admitted so far (``--max-jobs`` counts these)
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
        free = self.concurrency - len(self._inflight) + finishing
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.started)
        return max(free, 0)

    @property
    def max_jobs_reached(self) -> bool:
        return self.max_jobs is not None and self.started >= self.max_jobs

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
        if not force and any(
            i.cancel_reason is CancelReason.GIVE_BACK and i.executing for i in self._inflight.values()
        ):
            return []
        held, self._held = self._held, []
        return sorted(held, key=lambda g: g.item.seq, reverse=True)
