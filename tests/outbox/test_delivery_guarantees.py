"""What a delivered, failed or expired notification leaves behind, over a real SMTP server.

* A 2FA code is gone from the row once it is sent, failed or expired, and a code whose
  ``expires_minutes`` have passed is never sent (the row ends ``expired`` with the reason).
* Every attempt at one notification carries the same Message-ID, so the re-send that follows a
  lost reply (or a crash after the server accepted the message) can be de-duplicated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import CheckConstraint, MetaData, String, cast, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from asyncjobs.delivery import runtime
from asyncjobs.delivery.settings import reload_settings
from asyncjobs.outbox import notifications
from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.models import NAMING_CONVENTION, OutboxNotification, utcnow
from tests.testsupport.smtp_server import SmtpTestServer

SF = async_sessionmaker[AsyncSession]
T = OutboxNotification


@pytest.fixture
async def smtp_env(
    monkeypatch: pytest.MonkeyPatch, db_url: str, redis_url: str, smtp_sink: SmtpTestServer
) -> AsyncIterator[SmtpTestServer]:
    env = {
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": smtp_sink.host,
        "SMTP_PORT": str(smtp_sink.port),
        "SMTP_TLS": "none",
        "SMTP_FROM_EMAIL": "noreply@example.com",
        "SMS_PROVIDER": "console",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reload_settings()
    try:
        yield smtp_sink
    finally:
        await notifications.dispose_engines()
        await runtime.aclose_all()
        monkeypatch.undo()
        reload_settings()


async def add_2fa(sf: SF, recipient: str, code: str, expires_minutes: int = 10) -> int:
    async with sf() as session, session.begin():
        return await notifications.enqueue_2fa_notification(
            session, user_id=7, recipient=recipient, code=code, channel="email", expires_minutes=expires_minutes
        )


async def stored(sf: SF, nid: int) -> tuple[OutboxNotification, str]:
    """The row, and its payload exactly as the database holds it (text)."""
    async with sf() as s:
        row = await repo.get_notification(s, nid)
        raw = (await s.execute(select(cast(T.payload, String)).where(T.id == nid))).scalar_one()
    assert row is not None
    return row, raw


async def backdate(sf: SF, nid: int, **seconds_ago: float) -> None:
    async with sf() as s, s.begin():
        await s.execute(
            update(T).where(T.id == nid)
            .values(**{col: utcnow() - dt.timedelta(seconds=sec) for col, sec in seconds_ago.items()})
        )


# -- Item 9: 2FA codes do not outlive their notification, and expired codes are never sent ---------


async def test_sent_and_failed_rows_keep_no_2fa_code(session_factory: SF, smtp_env: SmtpTestServer) -> None:
    smtp_env.state.reject_rcpt["gone@example.com"] = "550 5.1.1 user unknown"
    ok = await add_2fa(session_factory, "ann@example.com", "482913")
    bad = await add_2fa(session_factory, "gone@example.com", "771104")
    assert "482913" in (await stored(session_factory, ok))[1]  # needed until it is sent

    assert await notifications.process_outbox_notification(ok) == "sent"
    assert await notifications.process_outbox_notification(bad) == "failed"
    [msg] = smtp_env.messages
    assert "482913" in msg.parsed().get_body(("plain",)).get_content()  # type: ignore[union-attr]

    for nid, code, status in ((ok, "482913", "sent"), (bad, "771104", "failed")):
        row, raw = await stored(session_factory, nid)
        assert row.status == status
        assert code not in raw, raw
        assert row.payload == {"user_id": 7, "expires_minutes": 10}


async def test_expired_2fa_code_is_never_sent_and_the_row_says_why(
    session_factory: SF, smtp_env: SmtpTestServer
) -> None:
    late = await add_2fa(session_factory, "late@example.com", "100200", expires_minutes=1)
    await backdate(session_factory, late, created_at=61)
    assert await notifications.process_outbox_notification(late) == "expired"

    # a retried code: the first attempt gets a 4xx, the code expires before the retry is due
    smtp_env.state.data_replies[1] = "451 4.3.0 try again later"
    retried = await add_2fa(session_factory, "slow@example.com", "300400", expires_minutes=2)
    assert await notifications.process_outbox_notification(retried) == "retry"
    await backdate(session_factory, retried, created_at=121, next_attempt_at=0)
    assert await notifications.process_outbox_notification(retried) == "expired"

    assert smtp_env.messages == []
    for nid, code in ((late, "100200"), (retried, "300400")):
        row, raw = await stored(session_factory, nid)
        assert row.status == "expired" and code not in raw, raw
        assert row.last_error is not None and row.last_error.startswith("not sent: the 2fa_code expired at ")
    row, _ = await stored(session_factory, retried)
    assert row.attempts == 2 and "451" in (row.last_error or "")
    # expired is final: never claimed, dispatched or sent again
    assert await notifications.process_outbox_notification(late) == "skipped"
    processor = notifications.build_processor(session_factory=session_factory, redispatch_after=0.001,
                                              deliver_directly=True)
    assert await processor.run_once() == 0


async def test_expired_on_a_table_created_before_the_expired_status(
    engine: AsyncEngine, session_factory: SF, smtp_env: SmtpTestServer
) -> None:
    """A table whose status CHECK constraint lacks 'expired' records the row as failed, never stuck."""
    legacy = MetaData(naming_convention=NAMING_CONVENTION)
    table = T.__table__.to_metadata(legacy)
    [status_check] = [c for c in table.constraints
                      if isinstance(c, CheckConstraint) and str(c.name).endswith("status")]
    table.constraints.discard(status_check)
    table.append_constraint(
        CheckConstraint("status IN ('pending', 'processing', 'sent', 'failed')", name="status")
    )
    await repo.drop_all(engine)
    async with engine.begin() as conn:
        await conn.run_sync(legacy.create_all)

    nid = await add_2fa(session_factory, "late@example.com", "550660", expires_minutes=1)
    await backdate(session_factory, nid, created_at=61)
    assert await notifications.process_outbox_notification(nid) == "expired"
    row, raw = await stored(session_factory, nid)
    assert row.status == "failed" and "550660" not in raw
    assert row.last_error is not None and row.last_error.startswith("expired: not sent: the 2fa_code expired")
    assert smtp_env.messages == []


def test_2fa_helper_rejects_a_bad_lifetime_without_echoing_the_code() -> None:
    import asyncio

    async def call(**kw: object) -> None:
        await notifications.enqueue_2fa_notification(
            None, user_id=1, recipient="a@example.com", channel="email", **kw  # type: ignore[arg-type]
        )

    with pytest.raises(ValueError, match=r"expires_minutes=0: pass a whole number of minutes >= 1"):
        asyncio.run(call(code="123456", expires_minutes=0))
    with pytest.raises(ValueError, match="contains a line break") as info:
        asyncio.run(call(code="12\n3456"))
    assert "3456" not in str(info.value)


# -- Item 10: one Message-ID per notification, whatever the number of attempts ---------------------


@pytest.fixture
def lost_reply_sink(smtp_env: SmtpTestServer) -> Iterator[SmtpTestServer]:
    """The first message is stored by the server, but its 250 reply never reaches the sender."""
    smtp_env.state.accept_then_drop.add(1)
    yield smtp_env


async def test_a_resend_after_a_lost_reply_carries_the_same_message_id(
    session_factory: SF, lost_reply_sink: SmtpTestServer
) -> None:
    nid = await add_2fa(session_factory, "ann@example.com", "482913")
    other = await add_2fa(session_factory, "bob@example.com", "111222")

    assert await notifications.process_outbox_notification(nid) == "retry"  # the sender saw a dropped DATA
    await backdate(session_factory, nid, next_attempt_at=0)
    assert await notifications.process_outbox_notification(nid) == "sent"
    assert await notifications.process_outbox_notification(other) == "sent"

    first, resend, second = (m.parsed() for m in lost_reply_sink.messages)
    assert first["To"] == resend["To"] == "ann@example.com"
    assert first["Message-ID"] == resend["Message-ID"]  # receivers can drop the re-send
    assert first["Message-ID"].startswith(f"<outbox.{nid}.") and first["Message-ID"].endswith("@example.com>")
    assert second["Message-ID"] != first["Message-ID"]
    row, _ = await stored(session_factory, nid)
    assert (row.status, row.attempts) == ("sent", 2)
