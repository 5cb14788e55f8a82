"""Transactional notifications: write in the caller's transaction, enqueue after COMMIT.

Usage (inside the application's own transaction)::

    async with session.begin():
        user = await create_user(session, ...)
        await enqueue_2fa_notification(
            session, user_id=user.id, recipient="+353871234567", code="482913", channel="sms"
        )
    # after COMMIT a job `process_outbox_notification(id)` is on the `sms` queue;
    # on ROLLBACK nothing was written and nothing is enqueued.

The commit enqueues all of the transaction's jobs in one pipelined round trip,
off the event loop, waiting at most :data:`ENQUEUE_TIMEOUT` seconds.  If Redis
is unreachable nothing is raised: a warning is logged, the rows stay
``pending`` and ``asyncjobs-outbox run`` enqueues them once they are
:data:`DEFAULT_MISSING_JOB_GRACE` seconds old and their job is still missing
(also when the producing process exited right after its commit).

This is a composition module: it reads settings (``DATABASE_URL``,
``REDIS_URL``, ``OUTBOX_*``, ``SMTP_FROM_*``) and wires the outbox core
(:mod:`asyncjobs.outbox`) to RQ queues and the delivery layer
(:mod:`asyncjobs.delivery.runtime`).  Its public face is :mod:`asyncjobs.notifications`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from asyncjobs._extras import missing_extra

try:
    import sqlalchemy.util
    from sqlalchemy import event
    from sqlalchemy.exc import MissingGreenlet
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session, SessionTransaction
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise missing_extra("outbox", "asyncjobs.outbox.notifications (the outbox)", _exc) from _exc

from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.engine import make_engine, make_session_factory
from asyncjobs.outbox.processor import Deliver, OutboxPolicy, OutboxProcessor, Outcome, handle_notification
from asyncjobs.outbox.templates import RenderedEmail, RenderedMessage, check_accept_url
from asyncjobs.perloop import PerLoop

__all__ = [
    "DEFAULT_MISSING_JOB_GRACE",
    "ENQUEUE_TIMEOUT",
    "JOB_FUNCTION",
    "JOB_MODULE",
    "QUEUE_FOR_CHANNEL",
    "build_processor",
    "dispose_engines",
    "enqueue_2fa_notification",
    "enqueue_notification_job",
    "enqueue_notification_jobs",
    "enqueue_user_invitation",
    "get_engine",
    "get_session_factory",
    "missing_notification_jobs",
    "process_outbox_notification",
    "retry_policy_from_settings",
    "use_delivery",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Await a coroutine from sync code running inside SQLAlchemy's greenlet (``await_`` since 2.1).
_await_in_greenlet: Callable[[Awaitable[Any]], Any] = (
    getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
)

#: Module the outbox job is named by in Redis and ``--allow-module``: the seed's public path
#: (:mod:`asyncjobs.notifications`, a thin face over this module), so jobs already in Redis, jobs
#: enqueued by this version and run by an older worker (rolling deploys), and
#: ``--allow-module asyncjobs.notifications`` keep working.
JOB_MODULE = "asyncjobs.notifications"
#: Dotted path of the job every outbox row is processed by (what RQ stores as the job's function).
JOB_FUNCTION = f"{JOB_MODULE}.process_outbox_notification"
QUEUE_FOR_CHANNEL = {"email": "emails", "sms": "sms"}
#: A row dispatched this long ago whose job is not in Redis is enqueued again by the processor (seconds).
DEFAULT_MISSING_JOB_GRACE = 10.0
#: How long RQ keeps a finished job's result (the outcome string).
RESULT_TTL = 3600

_INFO_KEY = "asyncjobs.outbox.pending_enqueues"
_HOOKED_KEY = "asyncjobs.outbox.hooked"
_CANCEL_KEY = "asyncjobs.outbox.deferred_cancel"


# -- Database: one engine per process and event loop ------------------------------------------


@dataclass
class _Db:
    pid: int
    url: str
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]


def _settings() -> Any:
    from asyncjobs.delivery.settings import get_settings

    return get_settings()


def _make_db() -> _Db:
    url = str(_settings().database_url)
    engine = make_engine(url)
    return _Db(pid=os.getpid(), url=url, engine=engine, factory=make_session_factory(engine))


async def _dispose(db: _Db) -> None:
    await db.engine.dispose()


def _drop(db: _Db, loop: asyncio.AbstractEventLoop | None = None) -> None:
    # Without I/O: its connections belong to a loop that stopped, or to the parent process.
    db.engine.sync_engine.dispose(close=False)


#: A stock `rq worker` runs each coroutine job on a fresh loop: engines of loops that stopped are
#: dropped, and after fork the parent's (see asyncjobs.perloop).
_dbs: PerLoop[_Db] = PerLoop(_make_db, close=_dispose, discard=_drop, forget=_drop)


def _db() -> _Db:
    url = str(_settings().database_url)
    return _dbs.get(valid=lambda db: db.url == url)


def get_engine() -> AsyncEngine:
    """The outbox engine for ``DATABASE_URL`` (created lazily, one per process and event loop)."""
    return _db().engine


def get_session_factory() -> async_sessionmaker[AsyncSession]:
    return _db().factory


async def dispose_engines() -> None:
    """Close this event loop's outbox engine (the worker does at shutdown)."""
    await _dbs.aclose_current()


# -- Enqueueing after commit ----------------------------------------------------------------------

#: Longest a commit waits for its jobs to reach Redis (seconds, all of the transaction's jobs together);
#: the processor's enqueue and job check use the same bound.  The event loop keeps running meanwhile.
ENQUEUE_TIMEOUT = 2.0

_redis_conns: dict[tuple[int, str], redis.Redis] = {}
_redis_lock = threading.Lock()


def _redis(url: str) -> redis.Redis:
    """A synchronous client used from worker threads only (its pool is thread-safe)."""
    key = (os.getpid(), url)
    with _redis_lock:
        conn = _redis_conns.get(key)
        if conn is None:
            conn = redis.Redis.from_url(
                url,
                socket_connect_timeout=ENQUEUE_TIMEOUT,
                socket_timeout=ENQUEUE_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            _redis_conns[key] = conn
        return conn


def _queue_name(channel: str) -> str:
    queue_name = QUEUE_FOR_CHANNEL.get(channel)
    if queue_name is None:
        raise ValueError(f"no queue for outbox channel {channel!r}; use one of {sorted(QUEUE_FOR_CHANNEL)}")
    return queue_name


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"{what} did not start within {ENQUEUE_TIMEOUT:g}s (thread pool busy)")


def _enqueue_jobs_sync(conn: redis.Redis, items: Sequence[repo.Dispatched], deadline: float | None) -> None:
    """Write every item's job with RQ's own serialization, in one MULTI/EXEC pipeline."""
    from rq import Queue

    by_queue: dict[str, list[repo.Dispatched]] = {}
    for item in items:
        by_queue.setdefault(_queue_name(item.channel), []).append(item)
    _check_deadline(deadline, "enqueueing outbox jobs")
    with conn.pipeline() as pipe:
        for name, group in by_queue.items():
            Queue(name, connection=conn).enqueue_many(
                [
                    Queue.prepare_data(
                        JOB_FUNCTION,
                        (item.id,),
                        job_id=item.job_id,
                        result_ttl=RESULT_TTL,
                        description=f"outbox notification {item.id}",
                    )
                    for item in group
                ],
                pipeline=pipe,
            )
        pipe.execute()


def _missing_jobs_sync(conn: redis.Redis, job_ids: Sequence[str], deadline: float | None) -> set[str]:
    from rq.job import Job

    _check_deadline(deadline, "checking outbox jobs")
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(Job.key_for(job_id))
        found = pipe.execute()
    return {job_id for job_id, n in zip(job_ids, found, strict=True) if not n}


async def _off_loop(fn: Callable[[float], _T]) -> _T:
    """Run blocking Redis I/O ``fn(deadline)`` in a thread; the caller waits at most ``ENQUEUE_TIMEOUT``."""
    timeout = ENQUEUE_TIMEOUT
    deadline = time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, fn, deadline), timeout)
    except TimeoutError:
        raise TimeoutError(f"Redis did not answer within {timeout:g}s") from None


async def enqueue_notification_jobs(items: Sequence[repo.Dispatched], *, redis_url: str | None = None) -> None:
    """Enqueue ``process_outbox_notification(id)`` for every item, on its channel's queue, all at once.

    One pipelined MULTI/EXEC round trip written by RQ's ``Queue.enqueue_many``
    (stock RQ format), run off the event loop; waits at most
    :data:`ENQUEUE_TIMEOUT` seconds in total and raises on failure.
    """
    if not items:
        return
    for item in items:
        _queue_name(item.channel)  # an unknown channel fails here, before any I/O
    url = redis_url or str(_settings().redis_url)
    await _off_loop(functools.partial(_enqueue_jobs_sync, _redis(url), list(items)))


async def missing_notification_jobs(job_ids: Sequence[str], *, redis_url: str | None = None) -> set[str]:
    """The ids among ``job_ids`` whose RQ job hash does not exist (one pipelined EXISTS round trip)."""
    if not job_ids:
        return set()
    url = redis_url or str(_settings().redis_url)
    return await _off_loop(functools.partial(_missing_jobs_sync, _redis(url), list(job_ids)))


def enqueue_notification_job(
    notification_id: int, channel: str, job_id: str, *, redis_url: str | None = None
) -> None:
    """Enqueue one ``process_outbox_notification(notification_id)`` (stock RQ), synchronously.

    Blocks the calling thread (up to the Redis timeouts, no retries); raises on
    failure.  From async code use :func:`enqueue_notification_jobs`.
    """
    _queue_name(channel)
    url = redis_url or str(_settings().redis_url)
    _enqueue_jobs_sync(_redis(url), [repo.Dispatched(notification_id, channel, job_id)], None)


async def _enqueue_committed(items: list[repo.Dispatched]) -> None:
    """After COMMIT: enqueue the transaction's jobs; never raises (the processor recovers the rows)."""
    try:
        await enqueue_notification_jobs(items)
    except Exception as exc:
        log.warning(
            "could not enqueue %d outbox notification(s) after commit (%s: %s); they stay pending and "
            "`asyncjobs-outbox run` enqueues them once they are %gs old: %s",
            len(items), type(exc).__name__, exc, DEFAULT_MISSING_JOB_GRACE,
            ", ".join(str(i.id) for i in items),
        )


_background: set[asyncio.Task[None]] = set()


def _in_background(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def _enqueue_during_commit(sync_session: Session, items: list[repo.Dispatched]) -> None:
    """Run inside ``await session.commit()``: the caller waits for the enqueue (bounded), the loop does not.

    If the caller is cancelled meanwhile, the commit still finishes cleanly (the
    session's transaction is closed and its connection returned), the enqueue
    goes on in the background, and the same cancellation reaches the caller
    right after the commit, at its next ``await``.
    """
    enqueue = _in_background(_enqueue_committed(items))
    try:
        await asyncio.shield(enqueue)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task here
            raise
        # A CancelledError out of this hook would leave the session holding the committed transaction
        # and its connection: put the cancellation aside until the transaction has ended.
        task.uncancel()
        sync_session.info[_CANCEL_KEY] = (task, exc.args[0] if exc.args else None)


@dataclass(frozen=True)
class _Pending:
    item: repo.Dispatched
    #: The innermost SAVEPOINT the row was written in (None: the transaction itself).
    savepoint: SessionTransaction | None


def _within(savepoint: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while savepoint is not None:
        if savepoint is ended:
            return True
        savepoint = savepoint.parent
    return False


def _after_commit(sync_session: Session) -> None:
    if sync_session.in_nested_transaction():
        return  # a SAVEPOINT was released: nothing is committed until the transaction itself is
    pending: list[_Pending] = sync_session.info.pop(_INFO_KEY, [])
    if not pending:
        return
    items = [p.item for p in pending]
    try:
        # Inside AsyncSession.commit(): wait for the enqueue as part of the caller's `await`, without
        # blocking the event loop (SQLAlchemy runs this hook in its greenlet; the coroutine runs on the loop).
        _await_in_greenlet(_enqueue_during_commit(sync_session, items))
    except MissingGreenlet:
        # A sync Session used outside AsyncSession: never block a running loop; without one, block.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_enqueue_committed(items))
        else:
            _in_background(_enqueue_committed(items))


def _after_soft_rollback(sync_session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.nested:  # a SAVEPOINT rolled back: forget only the rows written inside it
        pending: list[_Pending] = sync_session.info.get(_INFO_KEY, [])
        pending[:] = [p for p in pending if not _within(p.savepoint, previous_transaction)]


def _after_transaction_end(sync_session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        sync_session.info.pop(_INFO_KEY, None)  # rolled back or closed without COMMIT (COMMIT took them)
        deferred: tuple[asyncio.Task[Any], Any] | None = sync_session.info.pop(_CANCEL_KEY, None)
        if deferred is not None:
            task, message = deferred
            task.cancel(message)  # delivered at the caller's next await, after the commit returned


def _enqueue_after_commit(session: AsyncSession, item: repo.Dispatched) -> None:
    sync = session.sync_session
    if not sync.info.get(_HOOKED_KEY):
        event.listen(sync, "after_commit", _after_commit)
        event.listen(sync, "after_soft_rollback", _after_soft_rollback)
        event.listen(sync, "after_transaction_end", _after_transaction_end)
        sync.info[_HOOKED_KEY] = True
    sync.info.setdefault(_INFO_KEY, []).append(_Pending(item, sync.get_nested_transaction()))


async def _add(
    session: AsyncSession,
    *,
    kind: str,
    channel: str,
    recipient: str,
    payload: dict[str, Any],
    idempotency_key: str | None,
) -> int:
    job_id = repo.new_job_id()
    result = await repo.insert_notification(
        session,
        kind=kind,
        channel=channel,
        recipient=recipient,
        payload=payload,
        idempotency_key=idempotency_key,
        job_id=job_id,
        dispatched=True,
    )
    if result.created:
        _enqueue_after_commit(session, repo.Dispatched(result.id, channel, job_id))
    return result.id


def _check_recipient(channel: str, recipient: str) -> None:
    if channel == "email":
        from asyncjobs.delivery.email import validate_email_address

        validate_email_address(recipient, what="recipient")
    elif channel == "sms":
        from asyncjobs.delivery.sms import validate_e164

        validate_e164(recipient, what="SMS recipient")
    else:
        raise ValueError(f"unknown notification channel {channel!r}; use 'email' or 'sms'")


async def enqueue_2fa_notification(
    session: AsyncSession,
    *,
    user_id: int | str,
    recipient: str,
    code: str,
    channel: str,
    expires_minutes: int = 10,
    idempotency_key: str | None = None,
) -> int:
    """Write a 2FA-code notification in ``session``'s transaction; enqueue it after COMMIT.

    The code is never sent more than ``expires_minutes`` after this call (the row
    ends ``expired`` instead) and is removed from the row once it is sent,
    failed or expired.  Returns the outbox row id.  With an ``idempotency_key`` that was used before,
    nothing new is written or enqueued and the existing row's id is returned.
    """
    _check_recipient(channel, recipient)
    if not code or any(c in code for c in "\r\n"):
        problem = "is empty" if not code else "contains a line break"
        raise ValueError(f"the 2FA code {problem}; pass the code as a non-empty single-line string")
    if isinstance(expires_minutes, bool) or not isinstance(expires_minutes, int) or expires_minutes < 1:
        raise ValueError(f"expires_minutes={expires_minutes!r}: pass a whole number of minutes >= 1")
    return await _add(
        session,
        kind="2fa_code",
        channel=channel,
        recipient=recipient,
        payload={"user_id": user_id, "code": code, "expires_minutes": expires_minutes},
        idempotency_key=idempotency_key,
    )


async def enqueue_user_invitation(
    session: AsyncSession,
    *,
    email: str,
    inviter: str,
    accept_url: str,
    idempotency_key: str | None = None,
) -> int:
    """Write a user-invitation email in ``session``'s transaction; enqueue it after COMMIT."""
    _check_recipient("email", email)
    check_accept_url(accept_url)
    return await _add(
        session,
        kind="user_invitation",
        channel="email",
        recipient=email,
        payload={"inviter": inviter, "accept_url": accept_url},
        idempotency_key=idempotency_key,
    )


# -- Processing ----------------------------------------------------------------------------------

_deliver_override: Deliver | None = None


def use_delivery(deliver: Deliver | None) -> None:
    """Replace how rendered messages are sent (custom providers); ``None`` restores the default."""
    global _deliver_override
    _deliver_override = deliver


async def _deliver_via_runtime(claimed: repo.ClaimedNotification, message: RenderedMessage) -> None:
    """Send through the delivery layer (one attempt: the outbox row drives retries)."""
    from asyncjobs.delivery import runtime

    if isinstance(message, RenderedEmail):
        from asyncjobs.delivery.email import EmailMessage, build_mime, validate_email_address

        settings = _settings()
        sender = validate_email_address(settings.smtp_from_email, what="SMTP_FROM_EMAIL")
        prepared = build_mime(
            EmailMessage(
                to=(claimed.recipient,),
                subject=message.subject,
                body=message.text,
                html_body=message.html,
                from_email=sender,
                from_name=settings.smtp_from_name or None,
                # the same Message-ID on every attempt: receivers can drop a re-send as a duplicate
                headers=(("Message-ID", claimed.message_id(sender.rpartition("@")[2])),),
            )
        )
        await runtime.get_rate_limiter("smtp").acquire()
        await runtime.get_email_sender().send_prepared(prepared)
    else:
        from asyncjobs.delivery.sms import SmsMessage

        sms = SmsMessage(to=claimed.recipient, body=message.body)
        sms.validate()
        await runtime.get_rate_limiter("sms").acquire()
        await runtime.get_sms_provider().send(sms)


def retry_policy_from_settings() -> OutboxPolicy:
    s = _settings()
    return OutboxPolicy(
        max_attempts=s.outbox_max_attempts,
        visibility_timeout=s.outbox_visibility_timeout,
        backoff_base=s.outbox_retry_backoff_base,
    )


async def process_outbox_notification(notification_id: int) -> str:
    """The RQ job: claim the row, render, send, record the result; returns the outcome.

    Duplicate jobs for the same row (crash recovery, processor re-dispatch) are
    harmless: only one claim succeeds.  Delivery errors never fail the job; the
    outbox row records them and the processor schedules the retry.
    """
    outcome: Outcome = await handle_notification(
        get_session_factory(),
        int(notification_id),
        deliver=_deliver_override or _deliver_via_runtime,
        policy=retry_policy_from_settings(),
    )
    return outcome.value


process_outbox_notification.__module__ = JOB_MODULE


def build_processor(
    *,
    deliver_directly: bool = False,
    batch_size: int | None = None,
    poll_interval: float | None = None,
    redispatch_after: float | None = None,
    missing_job_grace: float | None = None,
    session_factory: async_sessionmaker[AsyncSession] | None = None,
) -> OutboxProcessor:
    """An :class:`OutboxProcessor` wired from settings (used by ``asyncjobs-outbox run``).

    In queue mode it also re-enqueues rows whose job is missing from Redis
    ``missing_job_grace`` seconds (default :data:`DEFAULT_MISSING_JOB_GRACE`) after their dispatch.
    """
    s = _settings()
    factory = session_factory or get_session_factory()
    policy = retry_policy_from_settings()
    redis_url = str(s.redis_url)

    async def enqueue(batch: Sequence[repo.Dispatched]) -> None:
        await enqueue_notification_jobs(batch, redis_url=redis_url)

    async def missing_jobs(job_ids: Sequence[str]) -> set[str]:
        return await missing_notification_jobs(job_ids, redis_url=redis_url)

    handle: Callable[[int], Any] | None = None
    if deliver_directly:

        async def handle(notification_id: int) -> Outcome:
            return await handle_notification(
                factory, notification_id, deliver=_deliver_override or _deliver_via_runtime, policy=policy
            )

    return OutboxProcessor(
        factory,
        enqueue=None if deliver_directly else enqueue,
        handle=handle,
        missing_jobs=None if deliver_directly else missing_jobs,
        batch_size=batch_size or s.outbox_batch_size,
        poll_interval=poll_interval or s.outbox_poll_interval,
        visibility_timeout=policy.visibility_timeout,
        redispatch_after=redispatch_after,
        missing_job_grace=DEFAULT_MISSING_JOB_GRACE if missing_job_grace is None else missing_job_grace,
    )
