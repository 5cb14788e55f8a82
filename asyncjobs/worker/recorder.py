"""Recording outcomes: one ``finish`` script call for every outcome ready, kept across outages.

Jobs hand their end-of-execution transition to :meth:`Recorder.submit`; the
outcomes accumulated are written in one round trip (results, registries, TTLs,
dependents and the worker's counters, see ``protocol/lua/finish.lua``).  If
Redis is unreachable the batch is kept in memory and sent again with backoff,
so results of jobs that finished during an outage are written when it ends;
sending one twice is harmless (finish.lua applies each outcome at most once).
Work that must follow a stored outcome (webhooks) runs afterwards, as tasks of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from asyncjobs import metrics
from asyncjobs.backoff import Backoff
from asyncjobs.protocol.store import Outcomes, RedisStore
from asyncjobs.protocol.transitions import Transition

log = logging.getLogger("asyncjobs.worker")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError)
#: Redis refusing writes for a while (out of memory, a read-only replica, a failed RDB save, too few
#: replicas): an outcome refused so is kept and sent again, as for a lost connection.
_REFUSED_TYPES = tuple(
    t for t in (getattr(redis.exceptions, n, None) for n in ("ReadOnlyError", "OutOfMemoryError")) if t is not None
)
_REFUSED_TEXT = ("OOM command not allowed", "read only replica", "MISCONF", "NOREPLICAS")


def writes_refused(exc: BaseException) -> bool:
    """``exc`` is Redis refusing writes for now (OOM, read-only, ...), not a script or data error."""
    if isinstance(exc, _REFUSED_TYPES):
        return True
    text = str(exc)
    return isinstance(exc, redis.exceptions.ResponseError) and any(t in text for t in _REFUSED_TEXT)


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What the worker hash says while outcomes are stored: ``busy`` with one running job, or ``idle``."""

    state: str
    current_job: str | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """One outcome waiting to be stored, with what follows once it is."""

    outcome: Transition
    recorded: Callable[[], None]  # on the loop, once stored (frees the job's slot)
    after: Callable[[], Awaitable[None]] | None = None  # on the loop, once stored (webhooks)


@dataclass
class Batch:
    entries: list[Pending] = field(default_factory=list)

    @property
    def outcomes(self) -> list[Transition]:
        return [e.outcome for e in self.entries]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class Recorder:
    """Buffers outcomes until they are stored.

    While the work loop runs it is the only writer: it takes the buffered batch
    and stores it in the same script call that claims the next jobs
    (:meth:`RedisStore.exchange`).  Once the loop has exited (drain, shutdown)
    the recorder writes on its own (``autonomous``).
    """

    def __init__(self, store: RedisStore, worker_state: Callable[[], WorkerState]) -> None:
        self.store = store
        self.worker_state = worker_state  # what to write in the worker hash with each batch
        self.pending = Batch()
        self.autonomous = False
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._closing = False
        self._side_tasks: set[asyncio.Future[Any]] = set()
        #: Redis refused to write outcomes (OOM, read-only): they are kept, and the worker claims
        #: nothing until they are stored
        self.refused = False

    def submit(
        self, outcome: Transition, recorded: Callable[[], None], after: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Queue an outcome; ``recorded`` runs on the loop once it is stored, then ``after`` as a task."""
        self.pending.entries.append(Pending(outcome, recorded, after))
        self._idle.clear()
        self._ready.set()

    def take(self, limit: int | None = None) -> Batch:
        """The oldest ``limit`` outcomes waiting (all of them with None); the rest stay pending."""
        if limit is not None and len(self.pending) > limit:
            entries = self.pending.entries
            self.pending = Batch(entries[limit:])
            return Batch(entries[:limit])
        batch, self.pending = self.pending, Batch()
        return batch

    def restore(self, batch: Batch) -> None:
        """Put a batch that could not be stored back in front of anything newer."""
        self.pending = Batch(batch.entries + self.pending.entries)

    def outcomes(self, batch: Batch) -> Outcomes:
        ws = self.worker_state()
        return Outcomes(batch.outcomes, ws.state, ws.current_job)

    def stored(self, batch: Batch) -> None:
        """The batch is in Redis: free its slots, then start its side work (webhooks)."""
        self.refused = False
        for entry in batch.entries:
            entry.recorded()
        for entry in batch.entries:
            if entry.after is not None:
                self._spawn(entry.after())

    async def store_one_by_one(self, batch: Batch) -> None:
        """Fallback when Redis refuses a whole batch: store each outcome alone, so one bad
        transition cannot block the others (outcomes of the batch already applied are skipped
        by finish.lua). One Redis still refuses is logged and left in the StartedJobRegistry,
        where RQ's abandoned-job maintenance fails or retries it (no webhook is sent for it)."""
        done: list[Pending] = []
        for i, entry in enumerate(batch.entries):
            try:
                await self.store.finish(Outcomes([entry.outcome]))
            except REDIS_ERRORS:
                # Redis is gone as a whole: keep the rest for the next attempt.
                self.restore(Batch(batch.entries[i:]))
                break
            except redis.exceptions.ResponseError as exc:
                if writes_refused(exc):
                    # Redis refuses writes for now: keep this outcome and the rest, send them again
                    log.warning("Redis refuses writes (%s): keeping %d outcome(s) to record later",
                                exc, len(batch.entries) - i)
                    self.restore(Batch(batch.entries[i:]))
                    self.refused = True
                    break
                log.error(
                    "could not record the outcome of job %s (%s); it stays in StartedJobRegistry "
                    "for RQ's maintenance",
                    entry.outcome.job_id,
                    exc,
                )
                entry.recorded()  # its slot is free; the job is RQ's maintenance's now
            else:
                done.append(entry)
        self.stored(Batch(done))

    def go_autonomous(self) -> None:
        self.autonomous = True
        self._ready.set()

    async def run(self) -> None:
        backoff = Backoff(on_wait=metrics.redis_error)
        while not self._closing:
            await self._ready.wait()
            self._ready.clear()
            while self.autonomous and self.pending and not self._closing:
                batch = self.take()
                try:
                    await self.store.finish(self.outcomes(batch))
                    self.stored(batch)
                    backoff.reset()
                except REDIS_ERRORS as exc:
                    self.restore(batch)
                    await backoff.wait(f"record {len(batch)} result(s): {exc}", None)
                except redis.exceptions.ResponseError as exc:
                    if writes_refused(exc):
                        self.restore(batch)
                        self.refused = True
                        await backoff.wait(f"record {len(batch)} result(s): Redis refuses writes: {exc}", None)
                        continue
                    log.error("Redis refused to record %d result(s) (%s)", len(batch), exc)
                    await self.store_one_by_one(batch)
                    await backoff.wait(f"Redis error: {exc}", None)
            if not self.pending:
                self._idle.set()

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def flush(self, timeout: float) -> None:
        """Wait until every outcome is recorded, then for side work (bounded: a dead Redis cannot hang exit)."""
        self.go_autonomous()
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._ready.set()
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=1.0)
        if self.pending:
            log.error(
                "could not record %d result(s) before exit (Redis unreachable); those jobs stay in "
                "StartedJobRegistry and RQ's maintenance will recover them",
                len(self.pending),
            )
        if self._side_tasks:  # webhooks in flight: each has its own deadline (at most 30 s); no longer
            _, late = await asyncio.wait(self._side_tasks, timeout=15)
            for task in late:
                task.cancel()

    def close(self) -> None:
        self._closing = True
        self._ready.set()
