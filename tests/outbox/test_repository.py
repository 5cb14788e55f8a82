"""Insert / claim / completion / dispatch semantics on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.models import OutboxNotification, utcnow

SF = async_sessionmaker[AsyncSession]


async def add(sf: SF, n: int = 1, **kw: object) -> list[int]:
    ids = []
    async with sf() as s, s.begin():
        for i in range(n):
            res = await repo.insert_notification(
                s,
                kind="2fa_code",
                channel="email",
                recipient=f"user{i}@example.com",
                payload={"code": f"{i:06d}"},
                **kw,  # type: ignore[arg-type]
            )
            ids.append(res.id)
    return ids


async def row(sf: SF, nid: int) -> OutboxNotification:
    async with sf() as s:
        found = await repo.get_notification(s, nid)
        assert found is not None
        return found


async def count(sf: SF) -> int:
    async with sf() as s:
        return int((await s.execute(select(func.count()).select_from(OutboxNotification))).scalar_one())


async def test_insert_commit_and_rollback(session_factory: SF) -> None:
    [nid] = await add(session_factory)
    r = await row(session_factory, nid)
    assert (r.status, r.attempts, r.kind, r.channel) == ("pending", 0, "2fa_code", "email")
    assert r.payload == {"code": "000000"}
    assert r.created_at.tzinfo is not None and abs(r.created_at - utcnow()) < dt.timedelta(minutes=1)
    assert "000000" not in repr(r)

    with pytest.raises(RuntimeError, match="boom"):
        async with session_factory() as s, s.begin():
            await repo.insert_notification(
                s, kind="2fa_code", channel="sms", recipient="+353871234567", payload={"code": "1"}
            )
            raise RuntimeError("boom")
    assert await count(session_factory) == 1


async def test_idempotency_key_returns_existing_row_and_keeps_transaction_usable(session_factory: SF) -> None:
    async with session_factory() as s, s.begin():
        first = await repo.insert_notification(
            s, kind="2fa_code", channel="sms", recipient="+353871234567", payload={"code": "1"},
            idempotency_key="login-42", job_id="job-a",
        )
        again = await repo.insert_notification(
            s, kind="2fa_code", channel="sms", recipient="+353871234567", payload={"code": "2"},
            idempotency_key="login-42", job_id="job-b",
        )
        other = await repo.insert_notification(
            s, kind="2fa_code", channel="sms", recipient="+353871234567", payload={"code": "3"}
        )
    assert first.created and not again.created
    assert again.id == first.id and again.job_id == "job-a"
    assert other.created and other.id != first.id
    assert (await row(session_factory, first.id)).payload == {"code": "1"}
    assert await count(session_factory) == 2


async def test_insert_rejects_unknown_channel(session_factory: SF) -> None:
    async with session_factory() as s:
        with pytest.raises(ValueError, match="'fax'"):
            await repo.insert_notification(s, kind="2fa_code", channel="fax", recipient="x", payload={})


async def test_claim_is_exclusive_under_concurrency(session_factory: SF) -> None:
    [nid] = await add(session_factory)

    async def try_claim() -> repo.ClaimedNotification | None:
        async with session_factory() as s, s.begin():
            return await repo.claim(s, nid, visibility_timeout=60)

    results = await asyncio.gather(*(try_claim() for _ in range(12)))
    winners = [c for c in results if c is not None]
    assert len(winners) == 1
    assert winners[0].attempts == 1 and winners[0].payload == {"code": "000000"}
    assert "000000" not in repr(winners[0])
    r = await row(session_factory, nid)
    assert (r.status, r.attempts, r.claim_token) == ("processing", 1, winners[0].claim_token)


async def test_claim_missing_row_or_not_due(session_factory: SF) -> None:
    [nid] = await add(session_factory)
    async with session_factory() as s, s.begin():
        assert await repo.claim(s, nid + 1000, visibility_timeout=60) is None
        # "now" before the row was created: not due yet
        assert await repo.claim(s, nid, visibility_timeout=60, now=utcnow() - dt.timedelta(hours=1)) is None


async def test_stale_claim_is_taken_over_and_old_owner_cannot_complete(session_factory: SF) -> None:
    [nid] = await add(session_factory)
    t0 = utcnow()
    async with session_factory() as s, s.begin():
        first = await repo.claim(s, nid, visibility_timeout=30, now=t0)
    assert first is not None
    async with session_factory() as s, s.begin():  # still fresh: nobody else may take it
        assert await repo.claim(s, nid, visibility_timeout=30, now=t0 + dt.timedelta(seconds=29)) is None
    async with session_factory() as s, s.begin():
        second = await repo.claim(s, nid, visibility_timeout=30, now=t0 + dt.timedelta(seconds=31))
    assert second is not None and second.attempts == 2 and second.claim_token != first.claim_token
    async with session_factory() as s, s.begin():
        assert not await repo.mark_sent(s, first)
        assert await repo.mark_sent(s, second)
    r = await row(session_factory, nid)
    assert r.status == "sent" and r.sent_at is not None and r.claim_token is None
    async with session_factory() as s, s.begin():  # sent rows are never claimable again
        assert await repo.claim(s, nid, visibility_timeout=0.001, now=utcnow() + dt.timedelta(days=1)) is None


async def test_retry_then_failed(session_factory: SF) -> None:
    [nid] = await add(session_factory)
    async with session_factory() as s, s.begin():
        c = await repo.claim(s, nid, visibility_timeout=60)
        assert c is not None
        later = utcnow() + dt.timedelta(seconds=120)
        error = "TransientDeliveryError: 451 try later"
        assert await repo.record_retry(s, c, error=error, next_attempt_at=later)
    r = await row(session_factory, nid)
    assert (r.status, r.last_error) == ("pending", "TransientDeliveryError: 451 try later")
    assert abs(r.next_attempt_at - later) < dt.timedelta(milliseconds=1)
    async with session_factory() as s, s.begin():
        assert await repo.claim(s, nid, visibility_timeout=60) is None  # not due yet
        c2 = await repo.claim(s, nid, visibility_timeout=60, now=later + dt.timedelta(seconds=1))
        assert c2 is not None and c2.attempts == 2 and c2.last_error == r.last_error
        assert await repo.mark_failed(s, c2, error="x" * 5000)
    r = await row(session_factory, nid)
    assert r.status == "failed" and r.last_error is not None and len(r.last_error) == repo.MAX_ERROR_LENGTH


async def test_dispatch_due_batches_and_redispatch(session_factory: SF) -> None:
    ids = await add(session_factory, 5)
    async with session_factory() as s, s.begin():
        first = await repo.dispatch_due(s, limit=3, visibility_timeout=60, redispatch_after=30)
    assert [d.id for d in first] == ids[:3]
    assert len({d.job_id for d in first}) == 3 and all(d.job_id.startswith(f"outbox-{d.id}-") for d in first)
    assert (await row(session_factory, ids[0])).job_id == first[0].job_id
    async with session_factory() as s, s.begin():
        second = await repo.dispatch_due(s, limit=10, visibility_timeout=60, redispatch_after=30)
        assert [d.id for d in second] == ids[3:]
        assert await repo.dispatch_due(s, limit=10, visibility_timeout=60, redispatch_after=30) == []
        # released rows are due again at once; the others after redispatch_after
        assert await repo.release_dispatch(s, second[:1]) == 1
        again = await repo.dispatch_due(s, limit=10, visibility_timeout=60, redispatch_after=30)
        assert [d.id for d in again] == [ids[3]]
        later = await repo.dispatch_due(
            s, limit=10, visibility_timeout=60, redispatch_after=30, now=utcnow() + dt.timedelta(seconds=31)
        )
        assert sorted(d.id for d in later) == ids


async def test_dispatch_skips_sent_and_fresh_claims_but_takes_stale_claims(session_factory: SF) -> None:
    a, b, c = await add(session_factory, 3, dispatched=True)
    t0 = utcnow()
    async with session_factory() as s, s.begin():
        ca = await repo.claim(s, a, visibility_timeout=60, now=t0)
        cb = await repo.claim(s, b, visibility_timeout=60, now=t0)
        assert ca and cb and await repo.mark_sent(s, ca)
    async with session_factory() as s, s.begin():
        # everything was dispatched at insert: nothing to do before redispatch_after
        assert await repo.dispatch_due(s, limit=10, visibility_timeout=60, redispatch_after=30) == []
        soon = await repo.dispatch_due(
            s, limit=10, visibility_timeout=60, redispatch_after=30, now=t0 + dt.timedelta(seconds=31)
        )
        assert [d.id for d in soon] == [c]  # b's claim is still fresh
        stale = await repo.dispatch_due(
            s, limit=10, visibility_timeout=60, redispatch_after=30, now=t0 + dt.timedelta(seconds=60.5)
        )
        assert [d.id for d in stale] == [b]


async def test_concurrent_dispatchers_take_disjoint_batches(session_factory: SF) -> None:
    ids = await add(session_factory, 60)

    async def dispatcher() -> list[int]:
        got: list[int] = []
        while True:
            async with session_factory() as s, s.begin():
                batch = await repo.dispatch_due(s, limit=7, visibility_timeout=60, redispatch_after=60)
            if not batch:
                return got
            got.extend(d.id for d in batch)

    results = await asyncio.gather(*(dispatcher() for _ in range(4)))
    everything = [i for r in results for i in r]
    assert sorted(everything) == ids  # each row exactly once


async def test_count_by_status(session_factory: SF) -> None:
    a, _b = await add(session_factory, 2)
    async with session_factory() as s, s.begin():
        c = await repo.claim(s, a, visibility_timeout=60)
        assert c is not None
        await repo.mark_sent(s, c)
    async with session_factory() as s:
        assert await repo.count_by_status(s) == {"sent": 1, "pending": 1}
