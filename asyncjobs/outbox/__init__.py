"""Transactional outbox: notifications that are never lost and never sent twice.

* :mod:`asyncjobs.outbox.models` -- the ``outbox_notifications`` table (own metadata, Alembic-ready).
* :mod:`asyncjobs.outbox.repository` -- insert, atomic claim, completion, batch dispatch.
* :mod:`asyncjobs.outbox.templates` -- 2FA code (email, SMS) and user invitation (email) messages.
* :mod:`asyncjobs.outbox.processor` -- processing one row, and the polling :class:`OutboxProcessor`.

This package knows nothing of SMTP, SMS providers, Redis or settings; see
:mod:`asyncjobs.notifications` for the ready-made composition.
"""

from __future__ import annotations

from asyncjobs.outbox.models import OutboxBase, OutboxNotification, metadata
from asyncjobs.outbox.processor import (
    ErrorVerdict,
    OutboxProcessor,
    Outcome,
    RetryPolicy,
    handle_notification,
)
from asyncjobs.outbox.repository import ClaimedNotification, create_all

__all__ = [
    "ClaimedNotification",
    "ErrorVerdict",
    "OutboxBase",
    "OutboxNotification",
    "OutboxProcessor",
    "Outcome",
    "RetryPolicy",
    "create_all",
    "handle_notification",
    "metadata",
]
