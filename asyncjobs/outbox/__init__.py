"""Transactional outbox: notifications written with the application's data, delivered at least once.

Duplicate jobs are harmless (one claim per attempt); a message reaches its
recipient twice only when the provider took it but the row could not record
that (a crash, a lost reply, a stalled worker), and every attempt at an email carries the same
Message-ID (:meth:`ClaimedNotification.message_id`) so receivers can tell.

* :mod:`asyncjobs.outbox.models` -- the ``outbox_notifications`` table (own metadata, Alembic-ready).
* :mod:`asyncjobs.outbox.repository` -- insert, atomic claim, completion, batch dispatch.
* :mod:`asyncjobs.outbox.templates` -- 2FA code (email, SMS) and user invitation (email) messages.
* :mod:`asyncjobs.outbox.processor` -- processing one row, and the polling :class:`OutboxProcessor`.

These core modules know nothing of SMTP, SMS providers, Redis or settings.
:mod:`asyncjobs.outbox.notifications` is the battery's composition (settings, RQ queues,
delivery through :mod:`asyncjobs.delivery`); its public face is :mod:`asyncjobs.notifications`.
"""

from __future__ import annotations

from asyncjobs._extras import missing_extra

try:
    import sqlalchemy  # noqa: F401  (every module of this package is built on it)
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise missing_extra("outbox", "asyncjobs.outbox", _exc) from _exc

from asyncjobs.outbox.models import OutboxBase, OutboxNotification, metadata
from asyncjobs.outbox.processor import (
    ErrorVerdict,
    OutboxPolicy,
    OutboxProcessor,
    Outcome,
    handle_notification,
)
from asyncjobs.outbox.repository import ClaimedNotification, create_all

__all__ = [
    "ClaimedNotification",
    "ErrorVerdict",
    "OutboxBase",
    "OutboxNotification",
    "OutboxPolicy",
    "OutboxProcessor",
    "Outcome",
    "create_all",
    "handle_notification",
    "metadata",
]
