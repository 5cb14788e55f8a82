"""The ``outbox_notifications`` table (SQLAlchemy 2.0 typed declarative).

The model lives on its own :class:`OutboxBase` / :data:`metadata`, so an
application can include it in its own Alembic migrations::

    # alembic/env.py
    from asyncjobs.outbox.models import metadata as outbox_metadata
    target_metadata = [app_metadata, outbox_metadata]

Works on PostgreSQL (asyncpg) and SQLite (aiosqlite).  Timestamps are always
timezone-aware UTC in Python; on SQLite they are stored as naive UTC.

The ``expired`` status is newer than the table: a table created before it has a
``ck_outbox_notifications_status`` CHECK constraint without it.  Replace that
constraint (PostgreSQL: ``ALTER TABLE outbox_notifications DROP CONSTRAINT
ck_outbox_notifications_status, ADD CONSTRAINT ck_outbox_notifications_status
CHECK (status IN ('pending', 'processing', 'sent', 'failed', 'expired'))``;
SQLite: an Alembic ``batch_alter_table`` rebuild).  Until then an expired 2FA
code is recorded as ``failed`` with an ``expired: ...`` reason.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "CHANNELS",
    "FINAL_STATUSES",
    "KINDS",
    "STATUSES",
    "OutboxBase",
    "OutboxNotification",
    "UTCDateTime",
    "metadata",
    "utcnow",
]

#: Notification kinds the templates know how to render.
KINDS: Final = ("2fa_code", "user_invitation")
CHANNELS: Final = ("email", "sms")
#: pending -> processing -> sent | failed | expired (or back to pending with a retry time).
STATUSES: Final = ("pending", "processing", "sent", "failed", "expired")
#: Final states: the row is never claimed again and its one-time secrets are gone from ``payload``.
FINAL_STATUSES: Final = ("sent", "failed", "expired")

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (naive UTC text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value!r} given to the outbox; pass a timezone-aware UTC datetime "
                "(e.g. datetime.now(datetime.UTC))"
            )
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class OutboxBase(DeclarativeBase):
    """Declarative base of the outbox tables (separate from the application's own)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata: Final = OutboxBase.metadata

_ID_TYPE = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PKs only
_JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class OutboxNotification(OutboxBase):
    """One notification to deliver, written in the application's own transaction."""

    __tablename__ = "outbox_notifications"

    id: Mapped[int] = mapped_column(_ID_TYPE, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]] = mapped_column(_JSON_TYPE)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    #: RQ job id of the latest dispatch (set at insert, replaced on every re-dispatch).
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    #: Random token of the current claim; completion only applies while it matches.
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    #: Earliest time the row may be (re)tried.
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: When a job was last enqueued for the row (NULL: nobody dispatched it yet).
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint(_in("channel", CHANNELS), name="channel"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # The processor's two queries: pending rows that are due, processing rows whose claim expired.
        Index("ix_outbox_notifications_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_notifications_status_claimed_at", "status", "claimed_at"),
    )

    def __repr__(self) -> str:
        # The payload may hold a one-time code: never show it.
        return (
            f"<OutboxNotification id={self.id} kind={self.kind} channel={self.channel} "
            f"status={self.status} attempts={self.attempts}>"
        )
