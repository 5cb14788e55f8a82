"""Named RQ queues bound to ``REDIS_URL``, created on first use (never at import).

Their public face is :mod:`asyncjobs.queues` (typed ``emails_queue`` ... attributes)::

    from asyncjobs.queues import emails_queue
    emails_queue.enqueue(send_email, "user@example.com", "Subject", "Body")

Here ``<name>_queue`` for every name in :data:`QUEUE_NAMES` is served by the module's ``__getattr__``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue

__all__ = ["QUEUE_NAMES", "get_connection", "get_queue", "reset_queues"]

QUEUE_NAMES = ("default", "emails", "sms", "imports", "exports", "summaries")

_lock = threading.Lock()
_connections: dict[str, Redis] = {}
_queues: dict[tuple[str, str], Queue] = {}


def get_connection() -> Redis:
    """The synchronous Redis connection for ``REDIS_URL`` (one per URL, created lazily)."""
    from redis import Redis

    from asyncjobs.delivery.settings import get_settings

    url = get_settings().redis_url
    with _lock:
        conn = _connections.get(url)
        if conn is None:
            conn = _connections[url] = Redis.from_url(url)
        return conn


def get_queue(name: str = "default", **kwargs: Any) -> Queue:
    """A stock ``rq.Queue`` called ``name`` on ``REDIS_URL`` (cached when no kwargs are given)."""
    from rq import Queue

    connection = get_connection()
    if kwargs:
        return Queue(name, connection=connection, **kwargs)
    from asyncjobs.delivery.settings import get_settings

    key = (get_settings().redis_url, name)
    with _lock:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = Queue(name, connection=connection)
        return queue


def reset_queues() -> None:
    """Forget cached queues and close their connections (tests, or after changing REDIS_URL)."""
    with _lock:
        conns = list(_connections.values())
        _connections.clear()
        _queues.clear()
    for conn in conns:
        conn.close()


def __getattr__(name: str) -> Any:
    if name.endswith("_queue") and name[: -len("_queue")] in QUEUE_NAMES:
        return get_queue(name[: -len("_queue")])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
