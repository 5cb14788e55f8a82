"""Processing one notification, and the polling :class:`OutboxProcessor`.

Nothing here knows SMTP, SMS providers, Redis or settings: the composition
layer (:mod:`asyncjobs.outbox.notifications`) injects a ``deliver`` coroutine
function, ``enqueue`` and ``missing_jobs`` coroutine functions and plain
configuration values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from asyncjobs.backoff import Jitter, RetryPolicy, wait_or
from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.models import utcnow
from asyncjobs.outbox.templates import RenderedMessage, TemplateError, expires_at, render

__all__ = [
    "Classify",
    "Deliver",
    "Enqueue",
    "ErrorVerdict",
    "MissingJobs",
    "OutboxPolicy",
    "OutboxProcessor",
    "Outcome",
    "default_classify",
    "handle_notification",
]

log = logging.getLogger(__name__)

SessionFactory = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class OutboxPolicy(RetryPolicy):
    """The package's :class:`~asyncjobs.backoff.RetryPolicy` (retry n waits ``backoff_base * 2**(n-1)``
    seconds, capped at ``backoff_max``, unless the provider said otherwise), with the outbox's timings."""

    backoff_base: float = 30.0
    backoff_max: float = 3600.0
    jitter: Jitter = "none"
    #: A ``processing`` claim older than this (seconds) is considered dead and may be re-claimed.
    visibility_timeout: float = 300.0
    #: Deadline for one send; defaults to half the visibility timeout so that a slow send is
    #: abandoned (and retried) before another worker may take the row over.
    send_timeout: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.visibility_timeout <= 0:
            raise ValueError(f"visibility_timeout must be > 0 seconds, got {self.visibility_timeout}")

    @property
    def effective_send_timeout(self) -> float:
        return self.send_timeout if self.send_timeout is not None else self.visibility_timeout / 2


class Outcome(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    #: Not sent: its content (a 2FA code) expired before it could be sent.
    EXPIRED = "expired"
    #: Not claimable: already sent/failed, claimed by someone else, not due yet, or no such row.
    SKIPPED = "skipped"
    #: Delivered (or failed) but our claim had expired and was taken over meanwhile.
    LOST_CLAIM = "lost_claim"


@dataclass(frozen=True)
class ErrorVerdict:
    permanent: bool
    retry_after: float | None = None


Deliver = Callable[[repo.ClaimedNotification, RenderedMessage], Awaitable[None]]
Classify = Callable[[Exception], ErrorVerdict]
#: Enqueue one job per row, all of them or none (raise): one round trip per batch.
Enqueue = Callable[[Sequence[repo.Dispatched]], Awaitable[None]]
#: Which of these job ids have no job in the queue's store (e.g. Redis)?
MissingJobs = Callable[[Sequence[str]], Awaitable[Collection[str]]]


def default_classify(exc: Exception) -> ErrorVerdict:
    """Template errors are permanent; otherwise honour a ``transient`` attribute (delivery errors).

    Unknown exceptions are treated as transient: retrying is the safe default and
    ``max_attempts`` bounds it.
    """
    if isinstance(exc, TemplateError):
        return ErrorVerdict(permanent=True)
    transient = getattr(exc, "transient", True)
    retry_after = getattr(exc, "retry_after", None)
    return ErrorVerdict(
        permanent=transient is False,
        retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def handle_notification(
    session_factory: SessionFactory,
    notification_id: int,
    *,
    deliver: Deliver,
    policy: OutboxPolicy,
    classify: Classify = default_classify,
) -> Outcome:
    """Claim, render, deliver and record one notification. Never raises for delivery errors."""
    async with session_factory() as session, session.begin():
        claimed = await repo.claim(session, notification_id, visibility_timeout=policy.visibility_timeout)
    if claimed is None:
        log.info("outbox notification %s not claimable (sent, failed, claimed elsewhere or not due)",
                 notification_id)
        return Outcome.SKIPPED

    async def finish(outcome: Outcome, op: Callable[[AsyncSession], Awaitable[bool]]) -> Outcome:
        async with session_factory() as session, session.begin():
            applied = await op(session)
        if not applied:
            log.warning(
                "outbox notification %s: claim expired and was taken over before we recorded %s; "
                "raise OUTBOX_VISIBILITY_TIMEOUT above the slowest send", claimed.id, outcome.value,
            )
            return Outcome.LOST_CLAIM
        return outcome

    try:
        deadline = expires_at(claimed.kind, claimed.payload, claimed.created_at or utcnow())
    except TemplateError as exc:
        error = _describe(exc)
        log.error("outbox notification %s failed permanently: %s", claimed.id, error)
        return await finish(Outcome.FAILED, lambda s: repo.mark_failed(s, claimed, error=error))
    if deadline is not None and utcnow() >= deadline:
        reason = (
            f"not sent: the {claimed.kind} expired at {deadline.isoformat(timespec='seconds')} before it could "
            f"be sent (attempt {claimed.attempts}; previous error: {claimed.last_error or 'none'})"
        )
        log.warning("outbox notification %s expired: %s", claimed.id, reason)
        try:
            return await finish(Outcome.EXPIRED, lambda s: repo.mark_expired(s, claimed, reason=reason))
        except IntegrityError:
            log.warning(
                "outbox notification %s: the table's status CHECK constraint predates 'expired'; recorded as "
                "failed instead. Add 'expired' to ck_outbox_notifications_status (see "
                "asyncjobs.outbox.models)", claimed.id,
            )
            return await finish(
                Outcome.EXPIRED, lambda s: repo.mark_failed(s, claimed, error=f"expired: {reason}")
            )

    if claimed.attempts > policy.max_attempts:
        reason = (
            f"gave up after {policy.max_attempts} attempts; the last attempt's worker stopped without "
            f"recording a result (previous error: {claimed.last_error or 'none'})"
        )
        log.error("outbox notification %s failed: %s", claimed.id, reason)
        return await finish(Outcome.FAILED, lambda s: repo.mark_failed(s, claimed, error=reason))

    log.info("outbox notification %s (%s by %s): attempt %d/%d", claimed.id, claimed.kind,
             claimed.channel, claimed.attempts, policy.max_attempts)
    try:
        message = render(claimed.kind, claimed.channel, claimed.recipient, claimed.payload)
        async with asyncio.timeout(policy.effective_send_timeout):
            await deliver(claimed, message)
    except Exception as exc:
        verdict = classify(exc)
        error = _describe(exc)
        if isinstance(exc, TimeoutError) and not str(exc):
            error = f"TimeoutError: send took longer than {policy.effective_send_timeout:g}s"
        if verdict.permanent:
            log.error("outbox notification %s failed permanently: %s", claimed.id, error)
            return await finish(Outcome.FAILED, lambda s: repo.mark_failed(s, claimed, error=error))
        if claimed.attempts >= policy.max_attempts:
            reason = f"gave up after {claimed.attempts} attempts; last error: {error}"
            log.error("outbox notification %s failed: %s", claimed.id, reason)
            return await finish(Outcome.FAILED, lambda s: repo.mark_failed(s, claimed, error=reason))
        delay = policy.delay(claimed.attempts, verdict.retry_after)
        when = utcnow() + dt.timedelta(seconds=delay)
        log.warning("outbox notification %s attempt %d failed (%s); retry in %.0fs", claimed.id,
                    claimed.attempts, error, delay)
        return await finish(
            Outcome.RETRY, lambda s: repo.record_retry(s, claimed, error=error, next_attempt_at=when)
        )
    log.info("outbox notification %s sent", claimed.id)
    return await finish(Outcome.SENT, lambda s: repo.mark_sent(s, claimed))


class OutboxProcessor:
    """Polls for due rows in bounded batches and enqueues (or directly delivers) them.

    Due rows are those nobody dispatched yet, rows released after a failed
    enqueue, rows due for a retry, stale claims, and rows dispatched longer
    than ``redispatch_after`` ago.  With ``missing_jobs`` the processor also
    looks at the rows dispatched more than ``missing_job_grace`` seconds ago
    and dispatches again those whose job does not exist: a producer whose
    enqueue failed, or that exited right after its commit, leaves such rows
    behind.  It checks a bounded chunk of them per poll (one ``missing_jobs``
    call per chunk); ``run(once=True)`` goes through all of them.

    Several processors may run side by side: PostgreSQL batches are taken with
    ``FOR UPDATE SKIP LOCKED``, re-dispatch re-checks the job id it looked at,
    and the per-row claim makes duplicate jobs harmless.  The constructor does
    no I/O; call :meth:`run` (until ``stop`` is set) or :meth:`run_once`.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        *,
        enqueue: Enqueue | None = None,
        handle: Callable[[int], Awaitable[object]] | None = None,
        missing_jobs: MissingJobs | None = None,
        batch_size: int = 100,
        poll_interval: float = 5.0,
        visibility_timeout: float = 300.0,
        redispatch_after: float | None = None,
        missing_job_grace: float = 10.0,
        concurrency: int = 10,
    ) -> None:
        if (enqueue is None) == (handle is None):
            raise ValueError("give the OutboxProcessor exactly one of enqueue= (queue mode) or handle= "
                             "(deliver directly)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if missing_job_grace < 0:
            raise ValueError(f"missing_job_grace must be >= 0 seconds, got {missing_job_grace}")
        self.session_factory = session_factory
        self.enqueue = enqueue
        self.handle = handle
        self.missing_jobs = missing_jobs
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.visibility_timeout = visibility_timeout
        #: A row dispatched this long ago and still claimable is dispatched again.
        self.redispatch_after = visibility_timeout if redispatch_after is None else redispatch_after
        #: A row dispatched this long ago whose job does not exist is dispatched again.
        self.missing_job_grace = missing_job_grace
        self.concurrency = concurrency
        self.dispatched_total = 0
        #: Where the walk over in-flight rows continues (row id), and whether it has more to see.
        self._in_flight_cursor = 0
        self._in_flight_unseen = False

    async def _redispatch_missing(self, limit: int) -> list[repo.Dispatched]:
        """Check the next ``limit`` in-flight rows; re-dispatch those whose job does not exist."""
        self._in_flight_unseen = False
        if self.missing_jobs is None or limit < 1 or self.missing_job_grace >= self.redispatch_after:
            return []
        now = utcnow()
        async with self.session_factory() as session:
            chunk = await repo.in_flight(
                session,
                limit=limit,
                dispatched_before=now - dt.timedelta(seconds=self.missing_job_grace),
                visibility_timeout=self.visibility_timeout,
                redispatch_after=self.redispatch_after,
                after_id=self._in_flight_cursor,
                now=now,
            )
        if len(chunk) < limit:  # the walk reached the end: start over next time
            self._in_flight_cursor = 0
        else:
            self._in_flight_cursor = chunk[-1].id
            self._in_flight_unseen = True
        if not chunk:
            return []
        try:
            missing = set(await self.missing_jobs([d.job_id for d in chunk]))
        except Exception as exc:
            self._in_flight_unseen = False
            log.warning("outbox: could not check whether %d dispatched notification(s) still have their job "
                        "(%s); retrying next tick", len(chunk), _describe(exc))
            return []
        stale = [d for d in chunk if d.job_id in missing]
        if not stale:
            return []
        async with self.session_factory() as session, session.begin():
            redone = await repo.redispatch(session, stale, visibility_timeout=self.visibility_timeout)
        if redone:
            log.warning(
                "outbox: %d notification(s) dispatched more than %gs ago have no job (the producer's enqueue "
                "failed or its process exited first); dispatching them again: %s", len(redone),
                self.missing_job_grace, ", ".join(str(d.id) for d in redone),
            )
        return redone

    async def run_once(self) -> int:
        """One bounded tick: dispatch up to ``batch_size`` due rows; return how many were dispatched.

        With ``missing_jobs``, up to the rest of the batch is filled with
        in-flight rows whose job turned out not to exist.
        """
        async with self.session_factory() as session, session.begin():
            batch = await repo.dispatch_due(
                session,
                limit=self.batch_size,
                visibility_timeout=self.visibility_timeout,
                redispatch_after=self.redispatch_after,
            )
        batch += await self._redispatch_missing(self.batch_size - len(batch))
        if not batch:
            return 0
        if self.enqueue is not None:
            try:
                await self.enqueue(batch)
            except Exception as exc:
                log.warning("outbox: enqueue of %d notification(s) failed (%s); they stay pending and are "
                            "retried next tick", len(batch), _describe(exc))
                with contextlib.suppress(Exception):
                    async with self.session_factory() as session, session.begin():
                        await repo.release_dispatch(session, batch)
                self._in_flight_unseen = False
                return 0
            log.info("outbox: enqueued %d due notification(s)", len(batch))
            self.dispatched_total += len(batch)
            return len(batch)
        handle = self.handle
        assert handle is not None
        sem = asyncio.Semaphore(self.concurrency)

        async def one(notification_id: int) -> None:
            async with sem:
                try:
                    await handle(notification_id)
                except Exception:
                    log.exception("outbox: processing notification %s failed", notification_id)

        async with asyncio.TaskGroup() as tg:
            for d in batch:
                tg.create_task(one(d.id))
        log.info("outbox: processed %d due notification(s) directly", len(batch))
        self.dispatched_total += len(batch)
        return len(batch)

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Tick until ``stop`` is set (the current batch is always finished first).

        ``once``: tick until nothing is due and every in-flight row was checked, then return.
        """
        log.info(
            "outbox processor started (%s, batch size %d, poll interval %gs, visibility timeout %gs)",
            "enqueue" if self.enqueue is not None else "deliver directly",
            self.batch_size, self.poll_interval, self.visibility_timeout,
        )
        while not stop.is_set():
            try:
                count = await self.run_once()
            except Exception:
                log.exception("outbox processor tick failed; retrying in %gs", self.poll_interval)
                count = 0
                self._in_flight_unseen = False
            if once:
                if count < self.batch_size and not self._in_flight_unseen:
                    break
                continue
            if count >= self.batch_size:
                continue  # more is due: go again without waiting (in-flight rows: one chunk per poll)
            await wait_or(stop, self.poll_interval)
        log.info("outbox processor stopped after dispatching %d notification(s)", self.dispatched_total)
