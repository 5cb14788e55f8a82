"""Queue patterns (``--queues 'emails:*'``): every queue whose name matches, served fairly.

A pattern (a name with ``*``, ``?`` or ``[``, matched as :func:`fnmatch.fnmatchcase`) stands for the
queues of RQ's queue set (``rq:queues``, where ``Queue.enqueue`` registers each queue) that match it,
re-read at most every :data:`REFRESH` seconds, so a new tenant's queue is served within about a
second.  Each claim starts the matched queues at the next one round-robin, and takes at most an even
share of its free slots from each of them, so one tenant's burst of 100,000 jobs cannot hold back
another tenant's first job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from asyncjobs.protocol.keys import Keys

__all__ = ["REFRESH", "QueueSet", "is_pattern"]

#: Seconds between reads of RQ's queue set (one SMEMBERS per worker).
REFRESH = 1.0


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


class QueueSet:
    """The worker's ``--queues`` with their patterns expanded."""

    def __init__(self, entries: Sequence[str], keys: Keys) -> None:
        self.entries = tuple(entries)
        self.keys = keys
        self.patterns = tuple(e for e in self.entries if is_pattern(e))
        self.literals = tuple(e for e in self.entries if not is_pattern(e))
        self._matched: dict[str, list[str]] = {p: [] for p in self.patterns}
        self._pattern_of: dict[str, str] = {}
        self._offsets: dict[str, int] = dict.fromkeys(self.patterns, 0)
        self._next_refresh = 0.0

    async def refresh(self, redis: Any) -> None:
        """Re-read RQ's queue set if :data:`REFRESH` has passed (nothing to do without patterns)."""
        if not self.patterns or time.monotonic() < self._next_refresh:
            return
        members = await redis.smembers(self.keys.queues)
        self._next_refresh = time.monotonic() + REFRESH
        prefix = self.keys.queue_prefix
        names = sorted(
            n for n in ((m.decode() if isinstance(m, bytes) else str(m)) for m in members)
            if n.startswith(prefix)
        )
        taken = set(self.literals)
        pattern_of: dict[str, str] = {}
        for p in self.patterns:
            matched = []
            for key in names:
                q = key[len(prefix):]
                if q not in taken and fnmatchcase(q, p):
                    matched.append(q)
                    taken.add(q)
                    pattern_of[q] = p
            self._matched[p] = matched
        self._pattern_of = pattern_of

    def pattern_of(self, queue: str) -> str | None:
        return self._pattern_of.get(queue)

    def order(self, entries: Sequence[str]) -> list[str]:
        """``entries`` (the configured order, after ``--dequeue-strategy``) with each pattern replaced by
        its queues, starting at the next one round-robin."""
        out: list[str] = []
        for e in entries:
            matched = self._matched.get(e)
            if matched is None:
                out.append(e)
            elif matched:
                k = self._offsets[e] % len(matched)
                self._offsets[e] = k + 1
                out += matched[k:] + matched[:k]
        return out

    def all(self) -> list[str]:
        """Every queue served now (for maintenance and repairs)."""
        return [*self.literals, *(q for p in self.patterns for q in self._matched[p])]

    def fair_share(self, queue: str, free: int) -> int | None:
        """At most this many of ``free`` slots for a queue matched by a pattern (None: not matched)."""
        p = self._pattern_of.get(queue)
        if p is None:
            return None
        return max(1, math.ceil(free / max(1, len(self._matched[p]))))
