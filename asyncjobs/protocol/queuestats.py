"""Queue sizes as RQ's own APIs count them, for operators' views.

``asyncjobs-worker info`` and the metrics sampler both show, per queue, the jobs
queued (``Queue.count``), started, failed, scheduled and deferred (the registries'
``count``) and how long the job at the head of the queue has waited.  This reads
them with any synchronous redis-py client in two pipelined round trips, however
many queues there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncjobs.protocol import keys
from asyncjobs.protocol.timeutil import parse_utc

__all__ = ["QueueSizes", "read_queue_sizes"]


@dataclass(frozen=True, slots=True)
class QueueSizes:
    queue: str
    queued: int
    started: int
    failed: int
    scheduled: int
    deferred: int
    #: seconds the job at the head of the queue has waited since ``enqueued_at``; None when the
    #: queue is empty or the head's timestamp is missing or unreadable
    oldest_age: float | None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _age(stamp: Any, now: float) -> float | None:
    if not stamp:
        return None
    try:
        return max(0.0, now - parse_utc(_text(stamp)).timestamp())
    except ValueError:
        return None


def read_queue_sizes(conn: Any, queues: Sequence[str], now: float) -> list[QueueSizes]:
    """The sizes of ``queues`` (in their order) at Unix time ``now``, read through ``conn``."""
    if not queues:
        return []
    pipe = conn.pipeline(transaction=False)
    for q in queues:
        pipe.llen(keys.queue(q))
        pipe.zcard(keys.started(q))
        pipe.zcard(keys.failed(q))
        pipe.zcard(keys.scheduled(q))
        pipe.zcard(keys.deferred(q))
        pipe.lindex(keys.queue(q), 0)
    counts = pipe.execute()
    heads = [counts[6 * i + 5] for i in range(len(queues))]
    pipe = conn.pipeline(transaction=False)
    for head in heads:
        if head:
            pipe.hget(keys.job(_text(head)), "enqueued_at")
    stamps = iter(pipe.execute() if any(heads) else [])
    out = []
    for i, q in enumerate(queues):
        queued, started, failed, scheduled, deferred = (int(c) for c in counts[6 * i: 6 * i + 5])
        age = _age(next(stamps), now) if heads[i] else None
        out.append(QueueSizes(q, queued, started, failed, scheduled, deferred, age))
    return out
