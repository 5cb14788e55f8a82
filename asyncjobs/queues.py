"""Named RQ queues bound to ``REDIS_URL``, by their public name (``from asyncjobs.queues import emails_queue``).

A thin face over :mod:`asyncjobs.delivery.queues`; queues are created on first use, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncjobs.delivery import queues as _queues
from asyncjobs.delivery.queues import QUEUE_NAMES, get_connection, get_queue, reset_queues

if TYPE_CHECKING:
    from rq import Queue

    default_queue: Queue
    emails_queue: Queue
    sms_queue: Queue
    imports_queue: Queue
    exports_queue: Queue
    summaries_queue: Queue

__all__ = [
    "QUEUE_NAMES",
    "default_queue",
    "emails_queue",
    "exports_queue",
    "get_connection",
    "get_queue",
    "imports_queue",
    "reset_queues",
    "sms_queue",
    "summaries_queue",
]


def __getattr__(name: str) -> Any:
    """``emails_queue`` and the other ``<name>_queue`` attributes, created on first use."""
    return getattr(_queues, name)
