"""Named RQ queues bound to ``REDIS_URL``, by their public name (``from asyncjobs.queues import emails_queue``).

A thin face over :mod:`asyncjobs.delivery.queues`; queues are created on first use, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncjobs.delivery import queues as _impl
from asyncjobs.delivery.queues import *  # noqa: F403  (QUEUE_NAMES, get_queue, get_connection, reset_queues)

if TYPE_CHECKING:
    from rq import Queue

    default_queue: Queue
    emails_queue: Queue
    sms_queue: Queue
    imports_queue: Queue
    exports_queue: Queue
    summaries_queue: Queue

__all__ = [*_impl.__all__, *(f"{name}_queue" for name in _impl.QUEUE_NAMES)]


def __getattr__(name: str) -> Any:
    """``emails_queue`` and the other ``<name>_queue`` attributes, created on first use."""
    return getattr(_impl, name)
