"""Every SQL statement the outbox runs, on PostgreSQL and SQLite.

State machine of a row::

    pending --claim--> processing --mark_sent--> sent
       ^                  |  \\--mark_failed--> failed
       |                  |   \\-mark_expired-> expired
       '--record_retry----'
    processing (claim older than the visibility timeout) --claim--> processing

Reaching a final state (sent, failed, expired) removes the payload's one-time
secrets (the 2FA code): they are needed only to send.

* :func:`insert_notification` runs inside the caller's session/transaction.
* :func:`claim` is one ``UPDATE ... WHERE <claimable> RETURNING``: of two
  workers (or a job delivered twice) only one gets the row.  Every claim
  increments ``attempts`` and stores a fresh ``claim_token``; the completion
  functions only apply while that token still matches, so a worker whose
  claim expired and was taken over cannot overwrite the new owner's result.
* :func:`dispatch_due` picks a bounded batch of claimable rows that no job
  was enqueued for recently, with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
  on SQLite (one writer at a time) the ``UPDATE`` re-checks the condition, so
  two processors never dispatch the same row in the same period either.
* :func:`in_flight` lists claimable rows dispatched a little while ago (their
  job should be in the queue); :func:`redispatch` gives those whose job turned
  out not to exist a new job id (a producer whose enqueue failed, or that
  exited before enqueueing, left them behind).

All functions take an explicit ``now`` (timezone-aware UTC) for testability;
it defaults to the Python clock, so keep the hosts' clocks in sync (NTP).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, String, and_, cast, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from asyncjobs.outbox.models import CHANNELS, OutboxNotification, metadata, utcnow
from asyncjobs.outbox.templates import without_secrets

__all__ = [
    "ClaimedNotification",
    "Dispatched",
    "InsertResult",
    "claim",
    "count_by_status",
    "create_all",
    "dispatch_due",
    "drop_all",
    "get_notification",
    "in_flight",
    "insert_notification",
    "mark_expired",
    "mark_failed",
    "mark_sent",
    "new_job_id",
    "record_retry",
    "redispatch",
    "release_dispatch",
]

T = OutboxNotification
#: last_error is truncated to this many characters.
MAX_ERROR_LENGTH = 2000


def new_job_id(notification_id: int | None = None) -> str:
    """An RQ job id for one dispatch of a notification (unique per dispatch)."""
    suffix = uuid.uuid4().hex[:16]
    return f"outbox-{notification_id}-{suffix}" if notification_id is not None else f"outbox-{suffix}"


@dataclass(frozen=True)
class InsertResult:
    id: int
    #: False when a row with the same idempotency key already existed (nothing was inserted).
    created: bool
    channel: str
    job_id: str | None


@dataclass(frozen=True)
class ClaimedNotification:
    """A row this process holds the claim on (``status = processing``)."""

    id: int
    kind: str
    channel: str
    recipient: str
    payload: Mapping[str, Any] = field(repr=False)  # may hold a one-time code
    attempts: int
    claim_token: str
    last_error: str | None = None
    created_at: dt.datetime | None = None
    idempotency_key: str = field(default="", repr=False)

    def message_id(self, domain: str) -> str:
        """One RFC 5322 Message-ID for every attempt at this notification: ``<outbox.ID.HASH@domain>``.

        Receivers can drop a re-send after a crash as a duplicate.  The hash of the
        row's idempotency key keeps ids apart across databases whose row ids overlap.
        """
        digest = hashlib.sha256(f"{self.id}:{self.idempotency_key}".encode()).hexdigest()[:16]
        return f"<outbox.{self.id}.{digest}@{domain}>"


@dataclass(frozen=True)
class Dispatched:
    id: int
    channel: str
    job_id: str


async def create_all(engine: AsyncEngine) -> None:
    """Create the outbox table and indexes if missing (standalone use; prefer Alembic in apps)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def drop_all(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)


def _insert_for(session: AsyncSession) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(T)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(T)
    return None


async def insert_notification(
    session: AsyncSession,
    *,
    kind: str,
    channel: str,
    recipient: str,
    payload: Mapping[str, Any],
    idempotency_key: str | None = None,
    job_id: str | None = None,
    dispatched: bool = False,
    now: dt.datetime | None = None,
) -> InsertResult:
    """Insert a pending row in the caller's transaction (nothing is committed here).

    With an ``idempotency_key`` that already exists, nothing is inserted and the
    existing row's id is returned with ``created=False`` (the caller's
    transaction stays usable).  ``dispatched=True`` records that the caller
    will enqueue ``job_id`` itself right after commit, so the polling processor
    leaves the row alone for its re-dispatch period.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown outbox channel {channel!r}; use one of {', '.join(CHANNELS)}")
    if not recipient:
        raise ValueError("empty recipient for an outbox notification; pass an email address or phone number")
    now = now or utcnow()
    key = idempotency_key or uuid.uuid4().hex
    values: dict[str, Any] = {
        "kind": kind,
        "channel": channel,
        "recipient": recipient,
        "payload": dict(payload),
        "status": "pending",
        "attempts": 0,
        "idempotency_key": key,
        "job_id": job_id,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
        "dispatched_at": now if dispatched else None,
    }
    stmt = _insert_for(session)
    if stmt is not None:
        stmt = stmt.values(**values).on_conflict_do_nothing(index_elements=[T.idempotency_key])
        new_id = (await session.execute(stmt.returning(T.id))).scalar_one_or_none()
    else:  # other dialects: plain insert (a duplicate key raises IntegrityError)
        new_id = (await session.execute(insert(T).values(**values).returning(T.id))).scalar_one()
    if new_id is not None:
        return InsertResult(id=int(new_id), created=True, channel=channel, job_id=job_id)
    row = (
        await session.execute(select(T.id, T.channel, T.job_id).where(T.idempotency_key == key))
    ).one()
    return InsertResult(id=int(row.id), created=False, channel=row.channel, job_id=row.job_id)


def _claimable(now: dt.datetime, visibility_timeout: float) -> ColumnElement[bool]:
    stale_before = now - dt.timedelta(seconds=visibility_timeout)
    return or_(
        and_(T.status == "pending", T.next_attempt_at <= now),
        and_(T.status == "processing", T.claimed_at <= stale_before),
    )


async def claim(
    session: AsyncSession,
    notification_id: int,
    *,
    visibility_timeout: float,
    now: dt.datetime | None = None,
) -> ClaimedNotification | None:
    """Atomically take the row if it is pending and due, or its claim expired; else None."""
    now = now or utcnow()
    token = secrets.token_hex(16)
    stmt = (
        update(T)
        .where(T.id == notification_id, _claimable(now, visibility_timeout))
        .values(
            status="processing",
            attempts=T.attempts + 1,
            claim_token=token,
            claimed_at=now,
            updated_at=now,
        )
        .returning(
            T.id, T.kind, T.channel, T.recipient, T.payload, T.attempts, T.last_error, T.created_at,
            T.idempotency_key,
        )
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        return None
    return ClaimedNotification(
        id=int(row.id),
        kind=row.kind,
        channel=row.channel,
        recipient=row.recipient,
        payload=dict(row.payload or {}),
        attempts=int(row.attempts),
        claim_token=token,
        last_error=row.last_error,
        created_at=row.created_at,
        idempotency_key=row.idempotency_key,
    )


async def _finish(session: AsyncSession, claimed: ClaimedNotification, **values: Any) -> bool:
    stmt = (
        update(T)
        .where(T.id == claimed.id, T.status == "processing", T.claim_token == claimed.claim_token)
        .values(claim_token=None, **values)
        .returning(T.id)
        .execution_options(synchronize_session=False)
    )
    return (await session.execute(stmt)).one_or_none() is not None


def _truncate(error: str) -> str:
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 3] + "..."


async def _finish_final(session: AsyncSession, claimed: ClaimedNotification, **values: Any) -> bool:
    """Finish in a final state, dropping the payload's one-time secrets."""
    return await _finish(session, claimed, payload=without_secrets(claimed.kind, claimed.payload), **values)


async def mark_sent(
    session: AsyncSession, claimed: ClaimedNotification, *, now: dt.datetime | None = None
) -> bool:
    """Record delivery; False if the claim was lost (another worker took the row over)."""
    now = now or utcnow()
    return await _finish_final(session, claimed, status="sent", sent_at=now, updated_at=now, last_error=None)


async def record_retry(
    session: AsyncSession,
    claimed: ClaimedNotification,
    *,
    error: str,
    next_attempt_at: dt.datetime,
    now: dt.datetime | None = None,
) -> bool:
    """Back to pending, due again at ``next_attempt_at`` (the processor re-dispatches it then)."""
    now = now or utcnow()
    return await _finish(
        session,
        claimed,
        status="pending",
        last_error=_truncate(error),
        next_attempt_at=next_attempt_at,
        dispatched_at=None,
        updated_at=now,
    )


async def mark_failed(
    session: AsyncSession, claimed: ClaimedNotification, *, error: str, now: dt.datetime | None = None
) -> bool:
    """Give up for good, keeping the reason in ``last_error``."""
    now = now or utcnow()
    return await _finish_final(session, claimed, status="failed", last_error=_truncate(error), updated_at=now)


async def mark_expired(
    session: AsyncSession, claimed: ClaimedNotification, *, reason: str, now: dt.datetime | None = None
) -> bool:
    """Not sent because its content (a 2FA code) expired first; the reason goes to ``last_error``.

    Raises :class:`sqlalchemy.exc.IntegrityError` on a table whose status CHECK
    constraint predates ``expired`` (see :mod:`asyncjobs.outbox.models`).
    """
    now = now or utcnow()
    return await _finish_final(session, claimed, status="expired", last_error=_truncate(reason), updated_at=now)


async def dispatch_due(
    session: AsyncSession,
    *,
    limit: int,
    visibility_timeout: float,
    redispatch_after: float,
    now: dt.datetime | None = None,
) -> list[Dispatched]:
    """Mark up to ``limit`` claimable, not recently dispatched rows as dispatched now.

    Each gets a fresh ``job_id``.  The caller commits, then enqueues one job per
    returned row (and calls :func:`release_dispatch` for any it could not enqueue).
    """
    if limit < 1:
        raise ValueError(f"batch limit must be >= 1, got {limit}")
    now = now or utcnow()
    due = and_(
        _claimable(now, visibility_timeout),
        or_(T.dispatched_at.is_(None), T.dispatched_at <= now - dt.timedelta(seconds=redispatch_after)),
    )
    candidates = select(T.id).where(due).order_by(T.next_attempt_at, T.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list((await session.execute(candidates)).scalars())
    if not ids:
        return []
    # Re-check ``due``: on SQLite the SELECT took no lock and another processor may have won.
    return await _mark_dispatched(session, and_(T.id.in_(ids), due), now)


async def in_flight(
    session: AsyncSession,
    *,
    limit: int,
    dispatched_before: dt.datetime,
    visibility_timeout: float,
    redispatch_after: float,
    after_id: int = 0,
    now: dt.datetime | None = None,
) -> list[Dispatched]:
    """Claimable rows dispatched before ``dispatched_before`` but inside the re-dispatch period.

    Their job should be waiting in the queue; the caller checks that it exists
    and calls :func:`redispatch` for those whose job does not.  Ordered by id,
    starting after ``after_id``, so successive calls can walk all of them.
    """
    if limit < 1:
        raise ValueError(f"batch limit must be >= 1, got {limit}")
    now = now or utcnow()
    stmt = (
        select(T.id, T.channel, T.job_id)
        .where(
            _claimable(now, visibility_timeout),
            T.job_id.is_not(None),
            T.dispatched_at <= dispatched_before,
            T.dispatched_at > now - dt.timedelta(seconds=redispatch_after),
            T.id > after_id,
        )
        .order_by(T.id)
        .limit(limit)
    )
    return [Dispatched(id=int(r.id), channel=r.channel, job_id=r.job_id) for r in await session.execute(stmt)]


async def redispatch(
    session: AsyncSession,
    stale: Sequence[Dispatched],
    *,
    visibility_timeout: float,
    now: dt.datetime | None = None,
) -> list[Dispatched]:
    """Mark rows found by :func:`in_flight` as dispatched now, with a new job id.

    Only rows still claimable and still carrying the job id that was checked are
    changed, so of two processors only one re-dispatches a row.
    """
    if not stale:
        return []
    now = now or utcnow()
    stale_ids = T.job_id.in_([d.job_id for d in stale])
    return await _mark_dispatched(session, and_(stale_ids, _claimable(now, visibility_timeout)), now)


async def _mark_dispatched(session: AsyncSession, where: Any, now: dt.datetime) -> list[Dispatched]:
    """Set the rows matching ``where`` dispatched now, each with a fresh job id
    (``outbox-<id>-<batch>``); the rows changed, by id."""
    batch = secrets.token_hex(6)
    job_id = literal("outbox-", String) + cast(T.id, String) + literal(f"-{batch}", String)
    stmt = (
        update(T)
        .where(where)
        .values(dispatched_at=now, job_id=job_id, updated_at=now)
        .returning(T.id, T.channel, T.job_id)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(stmt)).all()
    return sorted(
        (Dispatched(id=int(r.id), channel=r.channel, job_id=r.job_id) for r in rows), key=lambda d: d.id
    )


async def release_dispatch(session: AsyncSession, dispatched: Sequence[Dispatched]) -> int:
    """Undo :func:`dispatch_due` for rows whose job could not be enqueued (due again next tick)."""
    count = 0
    for d in dispatched:
        result = await session.execute(
            update(T)
            .where(T.id == d.id, T.job_id == d.job_id)
            .values(dispatched_at=None)
            .returning(T.id)
            .execution_options(synchronize_session=False)
        )
        count += len(result.all())
    return count


async def get_notification(session: AsyncSession, notification_id: int) -> OutboxNotification | None:
    return await session.get(T, notification_id, populate_existing=True)


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = (await session.execute(select(T.status, func.count()).group_by(T.status))).all()
    return {str(status): int(n) for status, n in rows}
