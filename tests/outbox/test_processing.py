"""handle_notification: sent, retried with backoff, failed for good, stale claims."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.models import utcnow
from asyncjobs.outbox.processor import ErrorVerdict, OutboxPolicy, Outcome, handle_notification
from asyncjobs.outbox.templates import RenderedEmail, RenderedMessage

SF = async_sessionmaker[AsyncSession]


class Transient(Exception):
    transient = True

    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class Permanent(Exception):
    transient = False


class Recorder:
    """A deliver() that records what it was asked to send, or raises queued errors."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[tuple[int, RenderedMessage]] = []

    async def __call__(self, claimed: repo.ClaimedNotification, message: RenderedMessage) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append((claimed.id, message))


async def add(sf: SF, kind: str = "2fa_code", payload: dict[str, str] | None = None) -> int:
    async with sf() as s, s.begin():
        res = await repo.insert_notification(
            s, kind=kind, channel="email", recipient="a@example.com", payload=payload or {"code": "123456"}
        )
    return res.id


async def fetch(sf: SF, nid: int):  # type: ignore[no-untyped-def]
    async with sf() as s:
        return await repo.get_notification(s, nid)


async def make_due(sf: SF, nid: int) -> None:
    from sqlalchemy import update

    from asyncjobs.outbox.models import OutboxNotification as T

    async with sf() as s, s.begin():
        await s.execute(update(T).where(T.id == nid).values(next_attempt_at=utcnow()))


async def test_sent_once_even_if_handled_twice(session_factory: SF) -> None:
    nid = await add(session_factory)
    deliver = Recorder()
    policy = OutboxPolicy()
    first = await handle_notification(session_factory, nid, deliver=deliver, policy=policy)
    second = await handle_notification(session_factory, nid, deliver=deliver, policy=policy)
    assert (first, second) == (Outcome.SENT, Outcome.SKIPPED)
    assert len(deliver.sent) == 1 and isinstance(deliver.sent[0][1], RenderedEmail)
    row = await fetch(session_factory, nid)
    assert row.status == "sent" and row.attempts == 1 and row.sent_at is not None


async def test_concurrent_duplicates_deliver_once(session_factory: SF) -> None:
    nid = await add(session_factory)
    deliver = Recorder()
    outcomes = await asyncio.gather(
        *(handle_notification(session_factory, nid, deliver=deliver, policy=OutboxPolicy()) for _ in range(8))
    )
    assert sorted(outcomes) == sorted([Outcome.SENT] + [Outcome.SKIPPED] * 7)
    assert len(deliver.sent) == 1


async def test_transient_error_backs_off_then_max_attempts_fails(session_factory: SF) -> None:
    nid = await add(session_factory)
    deliver = Recorder(Transient("451 busy"), Transient("451 busy", retry_after=500), Transient("451 again"))
    policy = OutboxPolicy(max_attempts=3, backoff_base=10)

    before = utcnow()
    assert await handle_notification(session_factory, nid, deliver=deliver, policy=policy) == Outcome.RETRY
    row = await fetch(session_factory, nid)
    assert row.status == "pending" and row.last_error == "Transient: 451 busy"
    assert before + dt.timedelta(seconds=10) <= row.next_attempt_at <= utcnow() + dt.timedelta(seconds=10)
    # not due: a duplicate job does nothing
    assert await handle_notification(session_factory, nid, deliver=deliver, policy=policy) == Outcome.SKIPPED

    await make_due(session_factory, nid)
    before = utcnow()
    assert await handle_notification(session_factory, nid, deliver=deliver, policy=policy) == Outcome.RETRY
    row = await fetch(session_factory, nid)
    assert row.next_attempt_at >= before + dt.timedelta(seconds=500)  # the provider's Retry-After wins

    await make_due(session_factory, nid)
    assert await handle_notification(session_factory, nid, deliver=deliver, policy=policy) == Outcome.FAILED
    row = await fetch(session_factory, nid)
    assert row.status == "failed" and row.attempts == 3
    assert row.last_error == "gave up after 3 attempts; last error: Transient: 451 again"
    assert deliver.sent == []


async def test_permanent_error_fails_at_once_with_reason(session_factory: SF) -> None:
    nid = await add(session_factory)
    deliver = Recorder(Permanent("550 5.1.1 user unknown"))
    outcome = await handle_notification(session_factory, nid, deliver=deliver, policy=OutboxPolicy())
    assert outcome == Outcome.FAILED
    row = await fetch(session_factory, nid)
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "Permanent: 550 5.1.1 user unknown")


async def test_unrenderable_payload_fails_permanently(session_factory: SF) -> None:
    nid = await add(
        session_factory, kind="user_invitation", payload={"inviter": "A", "accept_url": "javascript:x"}
    )
    deliver = Recorder()
    outcome = await handle_notification(session_factory, nid, deliver=deliver, policy=OutboxPolicy())
    assert outcome == Outcome.FAILED
    row = await fetch(session_factory, nid)
    assert row.status == "failed" and "accept_url" in row.last_error
    assert deliver.sent == []


async def test_custom_classifier(session_factory: SF) -> None:
    nid = await add(session_factory)
    deliver = Recorder(RuntimeError("quota exceeded"))
    outcome = await handle_notification(
        session_factory, nid, deliver=deliver, policy=OutboxPolicy(),
        classify=lambda exc: ErrorVerdict(permanent="quota" in str(exc)),
    )
    assert outcome == Outcome.FAILED


async def test_slow_send_times_out_and_is_retried(session_factory: SF) -> None:
    nid = await add(session_factory)

    async def hang(claimed: repo.ClaimedNotification, message: RenderedMessage) -> None:
        await asyncio.Event().wait()

    policy = OutboxPolicy(visibility_timeout=60, send_timeout=0.05)
    assert await handle_notification(session_factory, nid, deliver=hang, policy=policy) == Outcome.RETRY
    row = await fetch(session_factory, nid)
    assert row.last_error == "TimeoutError: send took longer than 0.05s"


async def test_dead_worker_on_last_attempt_ends_failed(session_factory: SF) -> None:
    past = utcnow() - dt.timedelta(seconds=120)
    async with session_factory() as s, s.begin():  # a worker claims the row, then dies
        nid = (await repo.insert_notification(
            s, kind="2fa_code", channel="sms", recipient="+353871234567", payload={"code": "1"}, now=past
        )).id
    async with session_factory() as s, s.begin():
        assert await repo.claim(s, nid, visibility_timeout=60, now=past)
    deliver = Recorder()
    policy = OutboxPolicy(max_attempts=1, visibility_timeout=60)
    assert await handle_notification(session_factory, nid, deliver=deliver, policy=policy) == Outcome.FAILED
    row = await fetch(session_factory, nid)
    assert row.status == "failed" and row.last_error.startswith("gave up after 1 attempts")
    assert deliver.sent == []
