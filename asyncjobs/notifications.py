"""Transactional notifications: write in the caller's transaction, enqueue after COMMIT.

Usage (inside the application's own transaction)::

    async with session.begin():
        user = await create_user(session, ...)
        await enqueue_2fa_notification(
            session, user_id=user.id, recipient="+353871234567", code="482913", channel="sms"
        )
    # after COMMIT a job `process_outbox_notification(id)` is on the `sms` queue;
    # on ROLLBACK nothing was written and nothing is enqueued.

If Redis is unreachable at commit time nothing is raised: a warning is logged,
the row stays ``pending`` and ``asyncjobs-outbox run`` enqueues it later.

This is a composition module: it reads settings (``DATABASE_URL``,
``REDIS_URL``, ``OUTBOX_*``, ``SMTP_FROM_*``) and wires the outbox core
(:mod:`asyncjobs.outbox`) to RQ queues and the delivery layer
(:mod:`asyncjobs.runtime`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.engine import make_engine, make_session_factory
from asyncjobs.outbox.processor import Deliver, OutboxProcessor, Outcome, RetryPolicy, handle_notification
from asyncjobs.outbox.templates import RenderedEmail, RenderedMessage, check_accept_url

__all__ = [
    "JOB_FUNCTION",
    "QUEUE_FOR_CHANNEL",
    "build_processor",
    "dispose_engines",
    "enqueue_2fa_notification",
    "enqueue_notification_job",
    "enqueue_user_invitation",
    "get_engine",
    "get_session_factory",
    "process_outbox_notification",
    "retry_policy_from_settings",
    "use_delivery",
]

log = logging.getLogger(__name__)

#: Dotted path of the job every outbox row is processed by.
JOB_FUNCTION = "asyncjobs.notifications.process_outbox_notification"
QUEUE_FOR_CHANNEL = {"email": "emails", "sms": "sms"}
#: Redis timeouts used when enqueueing from inside an application's commit (seconds).
ENQUEUE_SOCKET_TIMEOUT = 0.5
#: How long RQ keeps a finished job's result (the outcome string).
RESULT_TTL = 3600

_INFO_KEY = "asyncjobs.outbox.pending_enqueues"
_HOOKED_KEY = "asyncjobs.outbox.hooked"


# -- Database: one engine per process and event loop ------------------------------------------


@dataclass
class _Db:
    pid: int
    url: str
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]


_dbs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Db] = weakref.WeakKeyDictionary()


def _settings() -> Any:
    from asyncjobs.settings import get_settings

    return get_settings()


def _db() -> _Db:
    loop = asyncio.get_running_loop()
    url = str(_settings().database_url)
    # A stock `rq worker` runs each coroutine job on a fresh loop: forget engines of loops that
    # stopped (without I/O: their connections belong to that loop) and, after fork, the parent's.
    for other, old in list(_dbs.items()):
        if other is not loop and (other.is_closed() or not other.is_running() or old.pid != os.getpid()):
            _dbs.pop(other, None)
            old.engine.sync_engine.dispose(close=False)
    db = _dbs.get(loop)
    if db is not None and (db.pid != os.getpid() or db.url != url):
        db.engine.sync_engine.dispose(close=False)
        db = None
    if db is None:
        engine = make_engine(url)
        db = _Db(pid=os.getpid(), url=url, engine=engine, factory=make_session_factory(engine))
        _dbs[loop] = db
        try:
            from asyncjobs.worker.lifecycle import on_shutdown

            on_shutdown(dispose_engines)
        except ImportError:  # pragma: no cover - worker package not installed
            pass
    return db


def get_engine() -> AsyncEngine:
    """The outbox engine for ``DATABASE_URL`` (created lazily, one per process and event loop)."""
    return _db().engine


def get_session_factory() -> async_sessionmaker[AsyncSession]:
    return _db().factory


async def dispose_engines() -> None:
    """Close this event loop's outbox engine (the worker calls this at shutdown)."""
    loop = asyncio.get_running_loop()
    db = _dbs.pop(loop, None)
    if db is not None and db.pid == os.getpid():
        await db.engine.dispose()


# -- Enqueueing after commit ----------------------------------------------------------------------

_redis_conns: dict[tuple[int, str], redis.Redis] = {}


def _redis(url: str) -> redis.Redis:
    key = (os.getpid(), url)
    conn = _redis_conns.get(key)
    if conn is None:
        conn = redis.Redis.from_url(
            url,
            socket_connect_timeout=ENQUEUE_SOCKET_TIMEOUT,
            socket_timeout=ENQUEUE_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        _redis_conns[key] = conn
    return conn


def enqueue_notification_job(
    notification_id: int, channel: str, job_id: str, *, redis_url: str | None = None
) -> None:
    """Enqueue ``process_outbox_notification(notification_id)`` on the channel's queue (stock RQ).

    Synchronous, with short socket timeouts and no retries; raises on failure.
    """
    from rq import Queue

    queue_name = QUEUE_FOR_CHANNEL.get(channel)
    if queue_name is None:
        raise ValueError(f"no queue for outbox channel {channel!r}; use one of {sorted(QUEUE_FOR_CHANNEL)}")
    url = redis_url or str(_settings().redis_url)
    Queue(queue_name, connection=_redis(url)).enqueue(
        JOB_FUNCTION,
        notification_id,
        job_id=job_id,
        result_ttl=RESULT_TTL,
        description=f"outbox notification {notification_id}",
    )


@dataclass(frozen=True)
class _PendingEnqueue:
    id: int
    channel: str
    job_id: str


_background: set[asyncio.Task[None]] = set()


def _after_commit(sync_session: Session) -> None:
    pending: list[_PendingEnqueue] = sync_session.info.pop(_INFO_KEY, [])
    failed: list[_PendingEnqueue] = []
    for item in pending:
        try:
            enqueue_notification_job(item.id, item.channel, item.job_id)
        except Exception as exc:
            failed.append(item)
            log.warning(
                "could not enqueue outbox notification %s after commit (%s: %s); it stays pending and "
                "`asyncjobs-outbox run` will enqueue it", item.id, type(exc).__name__, exc,
            )
    if failed:
        _release_in_background(sync_session, failed)


def _release_in_background(sync_session: Session, failed: list[_PendingEnqueue]) -> None:
    """Best effort: mark the rows as not dispatched so the processor's next tick picks them up."""
    engine = sync_session.info.get("asyncjobs.outbox.engine")
    if not isinstance(engine, AsyncEngine):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - sync usage
        return

    async def release() -> None:
        try:
            factory = make_session_factory(engine)
            async with factory() as session, session.begin():
                await repo.release_dispatch(
                    session, [repo.Dispatched(id=f.id, channel=f.channel, job_id=f.job_id) for f in failed]
                )
        except Exception as exc:
            log.info("could not flag outbox notifications for the processor (%s); they are picked up "
                     "after the re-dispatch period instead", exc)

    task = loop.create_task(release())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _after_rollback(sync_session: Session) -> None:
    sync_session.info.pop(_INFO_KEY, None)


def _enqueue_after_commit(session: AsyncSession, item: _PendingEnqueue) -> None:
    sync = session.sync_session
    if not sync.info.get(_HOOKED_KEY):
        event.listen(sync, "after_commit", _after_commit)
        event.listen(sync, "after_rollback", _after_rollback)
        sync.info[_HOOKED_KEY] = True
    if isinstance(session.bind, AsyncEngine):
        sync.info["asyncjobs.outbox.engine"] = session.bind
    sync.info.setdefault(_INFO_KEY, []).append(item)


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
        _enqueue_after_commit(session, _PendingEnqueue(result.id, channel, job_id))
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

    Returns the outbox row id.  With an ``idempotency_key`` that was used before,
    nothing new is written or enqueued and the existing row's id is returned.
    """
    _check_recipient(channel, recipient)
    if not code or any(c in code for c in "\r\n"):
        raise ValueError(f"2FA code {code!r} must be a non-empty single-line string")
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
    from asyncjobs import runtime

    if isinstance(message, RenderedEmail):
        from asyncjobs.delivery.email import EmailMessage, build_mime

        settings = _settings()
        prepared = build_mime(
            EmailMessage(
                to=(claimed.recipient,),
                subject=message.subject,
                body=message.text,
                html_body=message.html,
                from_email=settings.smtp_from_email,
                from_name=settings.smtp_from_name or None,
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


def retry_policy_from_settings() -> RetryPolicy:
    s = _settings()
    return RetryPolicy(
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


def build_processor(
    *,
    deliver_directly: bool = False,
    batch_size: int | None = None,
    poll_interval: float | None = None,
    redispatch_after: float | None = None,
    session_factory: async_sessionmaker[AsyncSession] | None = None,
) -> OutboxProcessor:
    """An :class:`OutboxProcessor` wired from settings (used by ``asyncjobs-outbox run``)."""
    s = _settings()
    factory = session_factory or get_session_factory()
    policy = retry_policy_from_settings()
    redis_url = str(s.redis_url)

    async def enqueue(d: repo.Dispatched) -> None:
        await asyncio.to_thread(enqueue_notification_job, d.id, d.channel, d.job_id, redis_url=redis_url)

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
        batch_size=batch_size or s.outbox_batch_size,
        poll_interval=poll_interval or s.outbox_poll_interval,
        visibility_timeout=policy.visibility_timeout,
        redispatch_after=redispatch_after,
    )
