"""Recording outcomes: one ``finish`` script call for every outcome ready, kept across outages.

Jobs hand their end-of-execution transition to :meth:`Recorder.submit`; a single
task writes whatever has accumulated in one round trip (results, registries,
TTLs, dependents and the worker's counters, see ``protocol/lua/finish.lua``).
If Redis is unreachable the batch is kept in memory and retried with backoff,
so results of jobs that finished during an outage are written when it ends.
Work that must follow a stored outcome (webhooks) runs afterwards, off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from asyncjobs.protocol.store import Outcomes, RedisStore, Running

log = logging.getLogger("asyncjobs.worker")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError)


@dataclass
class Batch:
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    recorded: list[Callable[[], None]] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    working_time: float = 0.0

    def extend(self, other: Batch) -> None:
        self.outcomes += other.outcomes
        self.running += other.running
        self.after += other.after
        self.recorded += other.recorded
        self.ok += other.ok
        self.failed += other.failed
        self.working_time += other.working_time


class Recorder:
    """Buffers outcomes until they are stored.

    While the work loop runs it is the only writer: it takes the buffered batch
    and stores it in the same script call that claims the next jobs
    (:meth:`RedisStore.exchange`).  Once the loop has exited (drain, shutdown)
    the recorder writes on its own (``autonomous``).
    """

    def __init__(self, store: RedisStore, worker_state: Callable[[], tuple[str, str | None]]) -> None:
        self.store = store
        self.worker_state = worker_state  # -> (state, current_job) to write with each batch
        self.pending = Batch()
        self.autonomous = False
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._closing = False
        self._side_tasks: set[asyncio.Future[Any]] = set()

    def submit(
        self,
        outcome: dict[str, Any],
        counts: tuple[int, int, float],
        running: Running,
        after: Callable[[], None] | None = None,
        recorded: Callable[[], None] | None = None,
    ) -> None:
        """Queue an outcome; ``recorded`` runs on the loop once it is stored, ``after`` in a thread."""
        p = self.pending
        p.outcomes.append(outcome)
        p.running.append(running)
        if after is not None:
            p.after.append(after)
        if recorded is not None:
            p.recorded.append(recorded)
        p.ok += counts[0]
        p.failed += counts[1]
        p.working_time += counts[2]
        self._idle.clear()
        self._ready.set()

    def take(self) -> Batch:
        batch, self.pending = self.pending, Batch()
        return batch

    def restore(self, batch: Batch) -> None:
        """Put a batch that could not be stored back in front of anything newer."""
        batch.extend(self.pending)
        self.pending = batch

    def outcomes(self, batch: Batch) -> Outcomes:
        state, current = self.worker_state()
        return Outcomes(batch.outcomes, batch.ok, batch.failed, batch.working_time, state, current)

    def stored(self, batch: Batch) -> None:
        """The batch is in Redis: free its slots, then start its side work (webhooks)."""
        for done in batch.recorded:
            done()
        for fn in batch.after:
            self._spawn(asyncio.to_thread(fn))

    async def store_one_by_one(self, batch: Batch) -> None:
        """Fallback when Redis refuses a whole batch: store each outcome alone, so one bad
        transition cannot block the others. One Redis still refuses is logged and left in
        the StartedJobRegistry, where RQ's abandoned-job maintenance fails or retries it."""
        for i, outcome in enumerate(batch.outcomes):
            try:
                await self.store.finish(Outcomes([outcome]))
            except REDIS_ERRORS:
                # Redis is gone as a whole: keep the rest for the next attempt.
                # (``recorded`` callbacks are one per outcome, in order: they travel with them.)
                rest = Batch(outcomes=batch.outcomes[i:], running=batch.running[i:], recorded=batch.recorded[i:])
                self.restore(rest)
                batch.outcomes, batch.recorded = batch.outcomes[:i], batch.recorded[:i]
                break
            except redis.exceptions.ResponseError as exc:
                log.error(
                    "could not record the outcome of job %s (%s); it stays in StartedJobRegistry "
                    "for RQ's maintenance",
                    outcome.get("id"),
                    exc,
                )
        self.stored(batch)

    def go_autonomous(self) -> None:
        self.autonomous = True
        self._ready.set()

    async def run(self) -> None:
        backoff = Backoff()
        while not self._closing:
            await self._ready.wait()
            self._ready.clear()
            while self.autonomous and self.pending.outcomes and not self._closing:
                batch = self.take()
                try:
                    await self.store.finish(self.outcomes(batch))
                    self.stored(batch)
                    backoff.reset()
                except REDIS_ERRORS as exc:
                    self.restore(batch)
                    await backoff.wait(f"record {len(batch.outcomes)} result(s): {exc}", None)
                except redis.exceptions.ResponseError as exc:
                    log.error("Redis refused to record %d result(s) (%s)", len(batch.outcomes), exc)
                    await self.store_one_by_one(batch)
                    await backoff.wait(f"Redis error: {exc}", None)
            if not self.pending.outcomes:
                self._idle.set()

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def flush(self, timeout: float) -> None:
        """Wait until every outcome is recorded, then for side work (bounded: a dead Redis cannot hang exit)."""
        self.go_autonomous()
        deadline = time.monotonic() + timeout
        while self.pending.outcomes and time.monotonic() < deadline:
            self._ready.set()
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=1.0)
        if self.pending.outcomes:
            log.error(
                "could not record %d result(s) before exit (Redis unreachable); those jobs stay in "
                "StartedJobRegistry and RQ's maintenance will recover them",
                len(self.pending.outcomes),
            )
        if self._side_tasks:  # webhooks in flight: give them their own timeouts to finish
            await asyncio.wait(self._side_tasks, timeout=15)

    def close(self) -> None:
        self._closing = True
        self._ready.set()


class Backoff:
    """Exponential backoff with jitter for Redis outages (0.2 s doubling to 10 s)."""

    def __init__(self) -> None:
        self.delay = 0.2

    def reset(self) -> None:
        self.delay = 0.2

    async def wait(self, what: str, stop: asyncio.Event | None) -> None:
        delay = self.delay * (0.5 + random.random() / 2)
        log.warning("Redis unavailable (%s); retrying in %.1fs", what, delay)
        self.delay = min(self.delay * 2, 10.0)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            await wait_or(stop, delay)


async def wait_or(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
