"""The after-commit enqueue and the processor's recovery of rows whose job never reached Redis.

* A producer that commits while Redis is unreachable and exits leaves rows marked as dispatched
  with no job behind them: the processor re-dispatches them once a short grace period has passed
  (one pipelined EXISTS per poll), not after the 300 s re-dispatch period.
* The after-commit enqueue never blocks the caller's event loop, waits a bounded total time, and
  writes all of a transaction's jobs in one pipelined round trip, in RQ's exact format.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from asyncjobs.delivery.settings import reload_settings
from asyncjobs.outbox import notifications
from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.models import OutboxNotification as T
from asyncjobs.outbox.models import utcnow
from tests.testsupport.redis_server import free_port
from tests.testsupport.workers import BIN_DIR, PROJECT_ROOT

SF = async_sessionmaker[AsyncSession]

OUTBOX_CLI = [str(BIN_DIR / "asyncjobs-outbox")] if (BIN_DIR / "asyncjobs-outbox").exists() else [
    sys.executable, "-m", "asyncjobs.cli.outbox"
]


@pytest.fixture
def outbox_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, db_url: str) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", db_url)
    reload_settings()
    yield
    monkeypatch.undo()
    reload_settings()


@pytest.fixture
async def disposing(outbox_env: None) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await notifications.dispose_engines()


def queued_ids(conn: redis.Redis, queue: str) -> list[str]:
    return list(Queue(queue, connection=conn).job_ids)


async def rows(sf: SF) -> list[T]:
    async with sf() as s:
        return list((await s.execute(select(T).order_by(T.id))).scalars())


async def age_dispatch(sf: SF, seconds: float) -> None:
    """Pretend the rows were dispatched ``seconds`` ago (time passing, without sleeping)."""
    async with sf() as s, s.begin():
        await s.execute(
            update(T).where(T.dispatched_at.is_not(None))
            .values(dispatched_at=utcnow() - dt.timedelta(seconds=seconds))
        )


# -- Item 7: rows whose enqueue failed do not wait for the re-dispatch period ---------------------

PRODUCER = textwrap.dedent(
    """
    import asyncio, os, sys
    from asyncjobs.outbox import notifications
    from asyncjobs.outbox.engine import make_engine, make_session_factory

    async def main():
        engine = make_engine(sys.argv[1])
        factory = make_session_factory(engine)
        async with factory() as session, session.begin():
            for i in range(30):
                await notifications.enqueue_2fa_notification(
                    session, user_id=i, recipient=f"u{i}@example.com", code=f"{i:06d}", channel="email"
                )
        print("COMMITTED", flush=True)
        os._exit(0)  # the producer goes away right after its commit (a recycled web worker, a script)

    asyncio.run(main())
    """
)


async def test_rows_of_an_exited_producer_whose_enqueue_failed_are_enqueued_by_the_next_poll(
    session_factory: SF, db_url: str, redis_url: str, sync_redis: redis.Redis
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": dead_redis}
    producer = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", PRODUCER, db_url], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert producer.returncode == 0 and "COMMITTED" in producer.stdout, producer.stdout + producer.stderr
    assert "could not enqueue" in producer.stderr, producer.stderr
    committed = await rows(session_factory)
    assert len(committed) == 30 and {r.status for r in committed} == {"pending"}
    assert queued_ids(sync_redis, "emails") == []

    # A minute later (well inside the 300 s re-dispatch period), one poll picks every row up.
    await age_dispatch(session_factory, 60)
    result = await asyncio.to_thread(
        subprocess.run, [*OUTBOX_CLI, "run", "--once"], cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    queued = queued_ids(sync_redis, "emails")
    after = await rows(session_factory)
    assert sorted(queued) == sorted(r.job_id for r in after if r.job_id), result.stderr
    assert len(queued) == 30
    jobs = [Job.fetch(j, connection=sync_redis) for j in queued]
    assert sorted(j.args[0] for j in jobs) == [r.id for r in after]
    assert {j.func_name for j in jobs} == {notifications.JOB_FUNCTION}


async def test_processor_redispatches_only_rows_whose_job_is_missing_after_the_grace_period(
    session_factory: SF, sync_redis: redis.Redis, disposing: None
) -> None:
    async with session_factory() as session, session.begin():
        ids = [
            await notifications.enqueue_2fa_notification(
                session, user_id=i, recipient=f"u{i}@example.com", code="1", channel="email"
            )
            for i in range(5)
        ]
    jobs = {r.id: r.job_id for r in await rows(session_factory)}
    assert sorted(queued_ids(sync_redis, "emails")) == sorted(jobs.values())
    # the jobs of rows 1 and 3 vanished from Redis (never written, flushed, expired ...)
    for nid in (ids[1], ids[3]):
        Job.fetch(jobs[nid], connection=sync_redis).delete()

    processor = notifications.build_processor(session_factory=session_factory, batch_size=2)
    assert processor.missing_job_grace < processor.redispatch_after
    # inside the grace period nothing is re-dispatched (the producer's enqueue may still be in flight)
    await processor.run(asyncio.Event(), once=True)
    assert processor.dispatched_total == 0
    await age_dispatch(session_factory, processor.missing_job_grace + 1)
    # a batch size smaller than the number of rows in flight: --once still looks at every row
    await processor.run(asyncio.Event(), once=True)
    assert processor.dispatched_total == 2
    after = {r.id: r for r in await rows(session_factory)}
    assert {nid for nid in ids if after[nid].job_id != jobs[nid]} == {ids[1], ids[3]}
    assert sorted(queued_ids(sync_redis, "emails")) == sorted(r.job_id for r in after.values() if r.job_id)
    # the re-dispatched rows are fresh again; the others still have their job
    await processor.run(asyncio.Event(), once=True)
    assert processor.dispatched_total == 2


# -- Item 8: the after-commit enqueue never blocks the event loop ---------------------------------


@pytest.fixture
def blackholed_redis_url(monkeypatch: pytest.MonkeyPatch, outbox_env: None) -> Iterator[str]:
    """A TCP port that accepts connections (kernel backlog) but never answers a byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        monkeypatch.setenv("REDIS_URL", url)
        reload_settings()
        yield url


async def test_commit_while_redis_is_blackholed_keeps_the_event_loop_responsive(
    session_factory: SF, blackholed_redis_url: str, disposing: None, caplog: pytest.LogCaptureFixture
) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="asyncjobs.outbox.notifications"):
            async with session_factory() as session, session.begin():
                ids = [
                    await notifications.enqueue_2fa_notification(
                        session, user_id=i, recipient=f"u{i}@example.com", code="1", channel="email"
                    )
                    for i in range(30)
                ]
        elapsed = time.monotonic() - started
    finally:
        done.set()
        await beat
    # the loop kept running while Redis did not answer: no pause anywhere near a Redis timeout
    assert max(gaps) < 2.0, f"event loop blocked for {max(gaps):.1f}s during the commit"
    # the caller waited a bounded total time, not a timeout per row
    assert elapsed < notifications.ENQUEUE_TIMEOUT + 5, elapsed
    assert "could not enqueue 30 outbox notification(s)" in caplog.text, caplog.text
    assert {r.id for r in await rows(session_factory)} == set(ids)


async def test_commit_of_200_notifications_is_one_pipelined_transaction(
    session_factory: SF, sync_redis: redis.Redis, disposing: None
) -> None:
    # warm up (RQ asks the server's version once per connection)
    async with session_factory() as session, session.begin():
        await notifications.enqueue_2fa_notification(
            session, user_id=0, recipient="+353871234567", code="1", channel="sms"
        )
    sync_redis.config_resetstat()
    async with session_factory() as session, session.begin():
        for i in range(200):
            await notifications.enqueue_2fa_notification(
                session, user_id=i, recipient=f"u{i}@example.com" if i % 2 else "+353871234567",
                code="1", channel="email" if i % 2 else "sms",
            )
    stats = sync_redis.info("commandstats")
    assert stats["cmdstat_exec"]["calls"] == 1, stats
    assert stats["cmdstat_rpush"]["calls"] == 200, stats
    assert (len(queued_ids(sync_redis, "emails")), len(queued_ids(sync_redis, "sms"))) == (100, 101)


async def test_batch_enqueue_writes_what_stock_rq_writes(sync_redis: redis.Redis, redis_url: str) -> None:
    await notifications.enqueue_notification_jobs([repo.Dispatched(42, "sms", "outbox-ours")], redis_url=redis_url)
    Queue("sms", connection=sync_redis).enqueue(
        notifications.JOB_FUNCTION, 42, job_id="outbox-stock", result_ttl=notifications.RESULT_TTL,
        description="outbox notification 42",
    )
    ours = sync_redis.hgetall(Job.key_for("outbox-ours"))
    stock = sync_redis.hgetall(Job.key_for("outbox-stock"))
    timestamps = {b"created_at", b"enqueued_at"}
    assert set(ours) == set(stock)
    assert {k: v for k, v in ours.items() if k not in timestamps} == {
        k: v for k, v in stock.items() if k not in timestamps
    }
    assert sync_redis.ttl(Job.key_for("outbox-ours")) == sync_redis.ttl(Job.key_for("outbox-stock"))
    assert queued_ids(sync_redis, "sms") == ["outbox-ours", "outbox-stock"]
    assert sync_redis.smembers("rq:queues") == {b"rq:queue:sms"}
    job = Job.fetch("outbox-ours", connection=sync_redis)
    assert (job.func_name, job.args, job.origin, job.result_ttl) == (
        notifications.JOB_FUNCTION, (42,), "sms", notifications.RESULT_TTL
    )


async def test_processor_enqueue_fails_as_a_whole_and_releases_the_batch(
    session_factory: SF, blackholed_redis_url: str, disposing: None
) -> None:
    async with session_factory() as s, s.begin():
        for i in range(3):
            await repo.insert_notification(
                s, kind="2fa_code", channel="email", recipient=f"u{i}@example.com", payload={"code": "1"}
            )
    processor = notifications.build_processor(session_factory=session_factory)
    assert await processor.run_once() == 0
    assert {r.dispatched_at for r in await rows(session_factory)} == {None}
    assert all(r.next_attempt_at <= utcnow() for r in await rows(session_factory))


async def test_savepoints_and_unfinished_transactions_enqueue_only_what_was_committed(
    session_factory: SF, sync_redis: redis.Redis, disposing: None
) -> None:
    async def add(session: AsyncSession, who: str) -> int:
        return await notifications.enqueue_2fa_notification(
            session, user_id=1, recipient=f"{who}@example.com", code="1", channel="email"
        )

    async with session_factory() as session:
        async with session.begin():
            async with session.begin_nested():
                kept = await add(session, "kept")
            assert queued_ids(sync_redis, "emails") == []  # a released SAVEPOINT commits nothing yet
            with pytest.raises(RuntimeError, match="inner step"):
                async with session.begin_nested():
                    await add(session, "dropped")
                    raise RuntimeError("inner step failed")
            also = await add(session, "also")
        jobs = [Job.fetch(j, connection=sync_redis) for j in queued_ids(sync_redis, "emails")]
        assert sorted(j.args[0] for j in jobs) == sorted([kept, also])

    # a transaction that ends without COMMIT enqueues nothing, neither now nor at a later commit
    async with session_factory() as session:
        await add(session, "never")
    async with session.begin():
        pass
    assert len(queued_ids(sync_redis, "emails")) == 2


async def test_cancelled_while_waiting_for_redis_the_commit_completes_and_the_session_stays_usable(
    session_factory: SF, engine: AsyncEngine, blackholed_redis_url: str, disposing: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notifications, "ENQUEUE_TIMEOUT", 5.0)  # a long wait to cancel into
    # Connections out of the pool, counted by the pool's own events (every pool class has them;
    # NullPool, SQLAlchemy 2.0.0's default for aiosqlite files, has no checkedout()).
    out = {"checkout": 0, "checkin": 0}
    for name in out:
        event.listen(engine.sync_engine.pool, name, lambda *_, _n=name: out.__setitem__(_n, out[_n] + 1))
    session = session_factory()
    committed = asyncio.Event()

    async def request() -> None:
        async with session.begin():
            await notifications.enqueue_2fa_notification(
                session, user_id=1, recipient="a@example.com", code="1", channel="email"
            )
        committed.set()
        await asyncio.Event().wait()  # the rest of the request

    task = asyncio.create_task(request())
    deadline = time.monotonic() + 30
    while not await rows(session_factory):  # the row is committed: the commit now waits for Redis
        assert time.monotonic() < deadline, "the row was never committed"
        await asyncio.sleep(0.01)
    assert not committed.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert committed.is_set()  # the commit finished; the cancellation arrived at the next await
    assert not session.in_transaction()
    assert out["checkout"] >= 1 and out["checkout"] == out["checkin"], f"the cancelled commit kept its connection: {out}"
    async with session.begin():
        assert (await session.execute(select(func.count()).select_from(T))).scalar_one() == 1
    await session.close()

    # the same under asyncio.timeout(): the caller sees TimeoutError, as it would without the outbox
    session = session_factory()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            async with session.begin():
                await notifications.enqueue_2fa_notification(
                    session, user_id=2, recipient="c@example.com", code="2", channel="email"
                )
            await asyncio.Event().wait()
    assert not session.in_transaction()
    await session.close()
    assert len(await rows(session_factory)) == 2
