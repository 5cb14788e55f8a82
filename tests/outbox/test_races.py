"""One delivery per notification to a real SMTP sink under races, duplicate jobs and a worker killed before DATA."""

from __future__ import annotations

import asyncio
import email.message
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.engine import make_engine, make_session_factory
from asyncjobs.outbox.models import OutboxNotification as T
from asyncjobs.outbox.models import utcnow
from asyncjobs.outbox.processor import OutboxPolicy, OutboxProcessor, handle_notification
from asyncjobs.outbox.repository import ClaimedNotification
from asyncjobs.outbox.templates import RenderedEmail, RenderedMessage
from tests.testsupport.smtp_server import SmtpTestServer
from tests.testsupport.workers import WorkerProcess

SF = async_sessionmaker[AsyncSession]


def smtp_deliver(sink: SmtpTestServer):  # type: ignore[no-untyped-def]
    async def deliver(claimed: ClaimedNotification, message: RenderedMessage) -> None:
        assert isinstance(message, RenderedEmail)
        msg = email.message.EmailMessage()
        msg["From"] = "noreply@example.com"
        msg["To"] = claimed.recipient
        msg["Subject"] = message.subject
        msg["X-Outbox-Id"] = str(claimed.id)
        msg.set_content(message.text)
        msg.add_alternative(message.html, subtype="html")
        await aiosmtplib.send(msg, hostname=sink.host, port=sink.port, timeout=10)

    return deliver


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(pg_url)
    await repo.drop_all(eng)
    await repo.create_all(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


def delivered_ids(sink: SmtpTestServer) -> Counter[int]:
    return Counter(int(m.parsed()["X-Outbox-Id"]) for m in sink.messages)


async def test_two_processors_and_duplicate_jobs_deliver_each_exactly_once(
    pg_engine: AsyncEngine, pg_url: str, smtp_sink: SmtpTestServer
) -> None:
    n = 500
    sf = make_session_factory(pg_engine)
    async with sf() as s, s.begin():
        ids = [
            (await repo.insert_notification(
                s, kind="2fa_code", channel="email", recipient=f"user{i}@example.com", payload={"code": f"{i:06d}"}
            )).id
            for i in range(n)
        ]
    deliver = smtp_deliver(smtp_sink)
    policy = OutboxPolicy(max_attempts=3, visibility_timeout=300)
    # two processors, each with its own connection pool as if in separate processes
    engines = [make_engine(pg_url, pool_size=5) for _ in range(3)]
    try:
        factories = [make_session_factory(e) for e in engines]

        def processor(f: SF) -> OutboxProcessor:
            async def handle(nid: int) -> object:
                return await handle_notification(f, nid, deliver=deliver, policy=policy)

            return OutboxProcessor(f, handle=handle, batch_size=25, concurrency=4, poll_interval=0.05)

        async def duplicate_jobs(f: SF) -> None:
            # a worker that received every job twice (e.g. re-dispatch after a crash), in reverse order
            sem = asyncio.Semaphore(4)

            async def one(nid: int) -> None:
                async with sem:
                    await handle_notification(f, nid, deliver=deliver, policy=policy)

            await asyncio.gather(*(one(nid) for nid in reversed(ids + ids)))

        await asyncio.gather(
            processor(factories[0]).run(asyncio.Event(), once=True),
            processor(factories[1]).run(asyncio.Event(), once=True),
            duplicate_jobs(factories[2]),
        )
    finally:
        for e in engines:
            await e.dispose()

    counts = delivered_ids(smtp_sink)
    assert len(smtp_sink.messages) == n, f"{len(smtp_sink.messages)} messages for {n} notifications"
    assert sorted(counts) == ids and set(counts.values()) == {1}
    async with sf() as s:
        assert await repo.count_by_status(s) == {"sent": n}
        attempts = set((await s.execute(select(T.attempts))).scalars())
    assert attempts == {1}


CRASHING_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import aiosmtplib
    from asyncjobs.outbox import notifications

    async def deliver_then_hang(claimed, message):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=int(sys.argv[2]))
        await smtp.connect()
        await smtp.mail("noreply@example.com")
        await smtp.rcpt(claimed.recipient)
        print("MID-SEND", claimed.id, flush=True)
        await asyncio.Event().wait()  # the worker dies here, before DATA

    notifications.use_delivery(deliver_then_hang)
    asyncio.run(notifications.process_outbox_notification(int(sys.argv[1])))
    """
)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
async def test_worker_killed_mid_send_is_recovered_after_visibility_timeout(
    db: str, request: pytest.FixtureRequest, tmp_path, smtp_sink: SmtpTestServer  # type: ignore[no-untyped-def]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}" if db == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    try:
        await repo.drop_all(engine)
        await repo.create_all(engine)
        sf = make_session_factory(engine)
        async with sf() as s, s.begin():
            nid = (await repo.insert_notification(
                s, kind="2fa_code", channel="email", recipient="victim@example.com", payload={"code": "555"}
            )).id
        env = {"DATABASE_URL": url, "OUTBOX_VISIBILITY_TIMEOUT": "120", "REDIS_URL": "redis://127.0.0.1:1/0"}
        with WorkerProcess([sys.executable, "-c", CRASHING_WORKER, str(nid), str(smtp_sink.port)], env=env) as w:
            deadline = time.monotonic() + 30
            while "MID-SEND" not in w.output():
                assert w.is_running(), w.output()
                assert time.monotonic() < deadline, w.output()
                await asyncio.sleep(0.05)
            w.kill()
            w.wait(10)
        async with sf() as s:
            row = await repo.get_notification(s, nid)
        assert row is not None and (row.status, row.attempts) == ("processing", 1)

        # a processor with a short visibility timeout: the claim is not yet stale, nothing happens ...
        deliver = smtp_deliver(smtp_sink)
        policy = OutboxPolicy(visibility_timeout=1.0, send_timeout=10)

        async def handle(n: int) -> object:
            return await handle_notification(sf, n, deliver=deliver, policy=policy)

        proc = OutboxProcessor(sf, handle=handle, visibility_timeout=1.0, poll_interval=0.05)
        async with sf() as s, s.begin():  # make the dead worker's claim fresh again, deterministically
            await s.execute(update(T).where(T.id == nid).values(claimed_at=utcnow()))
        assert await proc.run_once() == 0
        # ... until the claim is older than the visibility timeout
        deadline = time.monotonic() + 30
        while await proc.run_once() == 0:
            assert time.monotonic() < deadline, "the stale claim was never recovered"
            await asyncio.sleep(0.05)
        async with sf() as s:
            row = await repo.get_notification(s, nid)
        assert row is not None and (row.status, row.attempts) == ("sent", 2)
        assert delivered_ids(smtp_sink) == Counter({nid: 1})
    finally:
        await engine.dispose()
