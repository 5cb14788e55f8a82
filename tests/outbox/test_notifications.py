"""enqueue_* helpers: enqueue only after COMMIT, nothing on ROLLBACK, survive a Redis outage."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from asyncjobs.delivery.settings import reload_settings
from asyncjobs.outbox import notifications
from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.models import OutboxNotification, utcnow
from asyncjobs.outbox.repository import ClaimedNotification
from asyncjobs.outbox.templates import RenderedEmail, RenderedMessage
from tests.testsupport.redis_server import RedisServer

SF = async_sessionmaker[AsyncSession]


@pytest.fixture
def outbox_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, db_url: str) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("OUTBOX_VISIBILITY_TIMEOUT", "300")
    reload_settings()
    yield
    monkeypatch.undo()
    reload_settings()


class Sent:
    def __init__(self) -> None:
        self.items: list[tuple[int, RenderedMessage]] = []

    async def __call__(self, claimed: ClaimedNotification, message: RenderedMessage) -> None:
        self.items.append((claimed.id, message))


@pytest.fixture
async def sent(outbox_env: None) -> AsyncIterator[Sent]:
    recorder = Sent()
    notifications.use_delivery(recorder)
    try:
        yield recorder
    finally:
        notifications.use_delivery(None)
        await notifications.dispose_engines()


def queued_jobs(conn: redis.Redis, queue: str) -> list[Job]:
    q = Queue(queue, connection=conn)
    return [Job.fetch(jid, connection=conn) for jid in q.job_ids]


async def run_queued(conn: redis.Redis, queue: str) -> list[str]:
    """Do what a worker does: pop each queued job and run its function."""
    outcomes = []
    for job in queued_jobs(conn, queue):
        assert job.func_name == "asyncjobs.notifications.process_outbox_notification"
        outcomes.append(await notifications.process_outbox_notification(*job.args))
        Queue(queue, connection=conn).remove(job.id)
    return outcomes


async def get_row(sf: SF, nid: int) -> OutboxNotification:
    async with sf() as s:
        row = await repo.get_notification(s, nid)
    assert row is not None
    return row


async def test_commit_enqueues_after_commit_and_job_sends(
    session_factory: SF, sync_redis: redis.Redis, sent: Sent
) -> None:
    async with session_factory() as session:
        async with session.begin():
            nid = await notifications.enqueue_2fa_notification(
                session, user_id=7, recipient="+353871234567", code="482913", channel="sms"
            )
            # inside the transaction: nothing is on the queue yet
            assert queued_jobs(sync_redis, "sms") == []
        [job] = queued_jobs(sync_redis, "sms")
        inv = None
        async with session.begin():
            inv = await notifications.enqueue_user_invitation(
                session, email="bob@example.com", inviter="Ann <Admin>", accept_url="https://app.example/i/1"
            )
    assert job.args == (nid,) and job.origin == "sms"
    assert job.id == (await get_row(session_factory, nid)).job_id
    [inv_job] = queued_jobs(sync_redis, "emails")
    assert inv_job.args == (inv,)

    assert await run_queued(sync_redis, "sms") == ["sent"]
    assert await run_queued(sync_redis, "emails") == ["sent"]
    assert [i for i, _ in sent.items] == [nid, inv]
    invitation = sent.items[1][1]
    assert isinstance(invitation, RenderedEmail) and "Ann &lt;Admin&gt;" in invitation.html
    row = await get_row(session_factory, nid)
    assert row.status == "sent" and row.payload["user_id"] == 7
    # a duplicate delivery of the same job does nothing
    assert await notifications.process_outbox_notification(nid) == "skipped"
    assert len(sent.items) == 2


async def test_rollback_writes_and_enqueues_nothing(
    session_factory: SF, sync_redis: redis.Redis, sent: Sent
) -> None:
    with pytest.raises(RuntimeError, match="signup failed"):
        async with session_factory() as session, session.begin():
            await notifications.enqueue_2fa_notification(
                session, user_id=1, recipient="a@example.com", code="1", channel="email"
            )
            raise RuntimeError("signup failed")
    # the same session after an explicit rollback, then a commit of unrelated work
    async with session_factory() as session:
        await notifications.enqueue_user_invitation(
            session, email="b@example.com", inviter="Ann", accept_url="https://app.example/i/2"
        )
        await session.rollback()
        async with session.begin():
            pass
    assert queued_jobs(sync_redis, "emails") == []
    async with session_factory() as s:
        assert await repo.count_by_status(s) == {}


async def test_idempotency_key_enqueues_once(session_factory: SF, sync_redis: redis.Redis, sent: Sent) -> None:
    ids = []
    for _ in range(2):
        async with session_factory() as session, session.begin():
            ids.append(await notifications.enqueue_2fa_notification(
                session, user_id=1, recipient="a@example.com", code="1", channel="email",
                idempotency_key="login-attempt-99",
            ))
    assert ids[0] == ids[1]
    assert len(queued_jobs(sync_redis, "emails")) == 1


async def test_invalid_input_raises_before_anything_is_written(session_factory: SF, sent: Sent) -> None:
    async with session_factory() as session, session.begin():
        with pytest.raises(ValueError, match=r"E\.164"):
            await notifications.enqueue_2fa_notification(
                session, user_id=1, recipient="0871234567", code="1", channel="sms"
            )
        with pytest.raises(ValueError, match="'fax'"):
            await notifications.enqueue_2fa_notification(
                session, user_id=1, recipient="a@example.com", code="1", channel="fax"
            )
        with pytest.raises(ValueError, match="accept_url"):
            await notifications.enqueue_user_invitation(
                session, email="b@example.com", inviter="Ann", accept_url="javascript:alert(1)"
            )


async def test_redis_down_at_commit_then_processor_recovers(
    session_factory: SF,
    sync_redis: redis.Redis,
    redis_server: RedisServer | None,
    sent: Sent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if redis_server is None:
        pytest.skip("needs the private redis-server fixture (ASYNCJOBS_TEST_REDIS_URL is set)")
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="asyncjobs.outbox.notifications"):
            async with session_factory() as session, session.begin():
                nid = await notifications.enqueue_2fa_notification(
                    session, user_id=1, recipient="a@example.com", code="777111", channel="email"
                )
        # the application's transaction committed; nothing was raised
        assert "could not enqueue 1 outbox notification(s) after commit (ConnectionError" in caplog.text
        row = await get_row(session_factory, nid)
        assert row.status == "pending" and row.dispatched_at is not None

        processor = notifications.build_processor(session_factory=session_factory)
        # inside the grace period the processor leaves the row alone (the commit's enqueue may be in flight)
        assert await processor.run_once() == 0
        # later, while Redis is still down, the job check fails: the row stays pending, nothing is lost
        async with session_factory() as s, s.begin():
            await s.execute(
                update(OutboxNotification).where(OutboxNotification.id == nid)
                .values(dispatched_at=utcnow() - dt.timedelta(seconds=processor.missing_job_grace + 1))
            )
        with caplog.at_level(logging.WARNING, logger="asyncjobs.outbox.processor"):
            assert await processor.run_once() == 0
        assert "could not check whether 1 dispatched notification(s) still have their job" in caplog.text
        assert (await get_row(session_factory, nid)).status == "pending"
    finally:
        redis_server.start()

    processor = notifications.build_processor(session_factory=session_factory)
    assert await processor.run_once() == 1
    [job] = queued_jobs(sync_redis, "emails")
    assert job.id == (await get_row(session_factory, nid)).job_id
    assert await run_queued(sync_redis, "emails") == ["sent"]
    assert [i for i, _ in sent.items] == [nid]
    assert await processor.run_once() == 0  # sent rows are never dispatched again


async def test_processor_deliver_directly_and_retry(session_factory: SF, sent: Sent) -> None:
    async with session_factory() as session, session.begin():
        ids = [
            await notifications.enqueue_2fa_notification(
                session, user_id=i, recipient=f"u{i}@example.com", code=str(i), channel="email"
            )
            for i in range(5)
        ]
    # rows were dispatched at insert: the processor leaves them alone during the re-dispatch period
    processor = notifications.build_processor(session_factory=session_factory, deliver_directly=True,
                                              batch_size=2)
    assert await processor.run_once() == 0
    processor = notifications.build_processor(session_factory=session_factory, deliver_directly=True,
                                              batch_size=2, redispatch_after=0.001)
    await processor.run(asyncio.Event(), once=True)
    assert sorted(i for i, _ in sent.items) == ids
