"""Queue limits set by the operator, stored in Redis, enforced when a job is claimed.

Per queue, fleet-wide (every asyncjobs worker re-reads which queues have limits every second, and
its claim script checks them atomically, so a change takes effect within a second, without a restart):

* ``concurrency``: at most N jobs of the queue running on all workers together.  Counted from the
  queue's StartedJobRegistry (``rq:wip:<queue>``): its members whose score (the heartbeat
  deadline) has not passed, so a job's slot is a lease renewed by its worker's heartbeat and a
  killed worker's slots come back once their deadline passes (the heartbeat TTL, 90 s by default).
* ``rate``: at most N job starts in any window of the period (``20/s``, ``600/m``, ``5/10s``),
  timed by the Redis server's clock.  The burst is at most N.
* ``paused``: nothing new of the queue starts, until resumed or until the pause's end.

A queue that is paused, at its concurrency or out of rate is skipped by that claim: the worker
claims from its other queues instead, and never holds a slot while a limit holds it back.

Everything lives in one Redis hash, ``<prefix>:asyncjobs:queue-limits`` (``asyncjobs:queue-limits``
under RQ's default prefix), with the fields ``c:<queue>``, ``r:<queue>`` (``<count>/<period ms>``)
and ``p:<queue>`` (the pause's end in epoch milliseconds, ``-1`` until resumed).  With a hash-tag
key prefix (``{rq}``) it shares the slot of RQ's keys, so Redis Cluster keeps working.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from asyncjobs.protocol.keys import DEFAULT, Keys
from asyncjobs.protocol.scripts import lua

__all__ = ["QueueControl", "QueueLimits", "Rate", "Throttled", "limits_key"]

_PERIODS_MS = {"ms": 1, "s": 1000, "sec": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def limits_key(keys: Keys = DEFAULT) -> str:
    """The hash holding every queue's limits, under ``keys``' prefix."""
    return keys.queue_limits


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` job starts in any window of ``period_ms`` milliseconds."""

    count: int
    period_ms: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"20/s"``, ``"600/m"``, ``"5/10s"``, ``"1/h"``."""
        m = _RATE_RE.match(text.lower())
        if not m or m.group(3) not in _PERIODS_MS:
            raise ValueError(
                f"rate {text!r} is not <count>/<period>: use e.g. 20/s, 600/m, 5/10s or 100/h"
            )
        count, mult = int(m.group(1)), int(m.group(2) or 1)
        period = mult * _PERIODS_MS[m.group(3)]
        if count < 1 or period < 1:
            raise ValueError(f"rate {text!r} must allow at least 1 start per period of at least 1 ms")
        return cls(count, period)

    def __str__(self) -> str:
        for unit, ms in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if self.period_ms % ms == 0:
                n = self.period_ms // ms
                return f"{self.count}/{'' if n == 1 else n}{unit}"
        return f"{self.count}/{self.period_ms}ms"


def parse_duration(text: str) -> float:
    """``"30"`` / ``"30s"`` / ``"10m"`` / ``"2h"`` / ``"500ms"`` -> seconds."""
    m = _DURATION_RE.match(text.lower())
    if not m:
        raise ValueError(f"duration {text!r} is not a number of seconds or e.g. 30s, 10m, 2h")
    return float(m.group(1)) * _PERIODS_MS[m.group(2) or "s"] / 1000


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """One queue's limits as stored (``None``: not set)."""

    queue: str
    concurrency: int | None = None
    rate: Rate | None = None
    #: the pause's end (epoch seconds); ``math.inf`` until resumed; ``None`` when not paused
    paused_until: float | None = None

    @property
    def empty(self) -> bool:
        return self.concurrency is None and self.rate is None and self.paused_until is None

    def paused_at(self, now: float) -> bool:
        return self.paused_until is not None and self.paused_until > now


class Throttled(Exception):
    """Raised by a job: "the provider asks us to slow down" (HTTP 429, SMTP 421, ...).

    The job goes back to the front of its queue, neither failed nor counted as a retry, and its
    queue is paused on every asyncjobs worker for ``retry_after`` seconds (an existing longer
    pause is kept).
    """

    def __init__(self, retry_after: float = 30.0, message: str = "") -> None:
        if not isinstance(retry_after, int | float) or not math.isfinite(retry_after) or retry_after < 0:
            raise ValueError(f"Throttled(retry_after={retry_after!r}): give a finite number of seconds >= 0")
        self.retry_after = float(retry_after)
        super().__init__(message or f"throttled: retry after {self.retry_after:g}s")


PAUSE_SCRIPT = lua("pause.lua")


def _ms(seconds: float | None) -> int:
    if seconds is None:
        return -1
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"pause for {seconds!r} seconds: give a finite number >= 0, or None for until resumed")
    return int(seconds * 1000)


def parse_limits(raw: dict[bytes, bytes]) -> dict[str, QueueLimits]:
    """The limits hash's fields, by queue."""
    found: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        field, value = k.decode(), v.decode()
        kind, _, queue = field.partition(":")
        entry = found.setdefault(queue, {})
        try:
            if kind == "c":
                entry["concurrency"] = int(value)
            elif kind == "r":
                count, _, period = value.partition("/")
                entry["rate"] = Rate(int(count), int(period))
            elif kind == "p":
                ms = int(value)
                entry["paused_until"] = math.inf if ms == -1 else ms / 1000
        except ValueError:
            continue  # not ours to interpret; the claim script ignores it too
    return {q: QueueLimits(q, **e) for q, e in sorted(found.items())}


class QueueControl:
    """Set, read and clear queue limits and pauses (a synchronous ``redis.Redis``)::

        QueueControl(redis).limit("sms", concurrency=10, rate="20/s")
        QueueControl(redis).pause("sms", seconds=600)
    """

    def __init__(self, redis: Any, keys: Keys = DEFAULT) -> None:
        self.redis = redis
        self.keys = keys
        self.key = limits_key(keys)

    def limit(self, queue: str, *, concurrency: int | None = None, rate: str | Rate | None = None) -> QueueLimits:
        """Set the given limits (the others are kept); returns the queue's limits now."""
        _check_queue(queue)
        if concurrency is None and rate is None:
            raise ValueError("limit(): give concurrency=N and/or rate='N/s' (clear() removes limits)")
        mapping: dict[str, str] = {}
        if concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
                raise ValueError(f"concurrency {concurrency!r} must be a whole number >= 1")
            mapping[f"c:{queue}"] = str(concurrency)
        if rate is not None:
            r = rate if isinstance(rate, Rate) else Rate.parse(rate)
            mapping[f"r:{queue}"] = f"{r.count}/{r.period_ms}"
        self.redis.hset(self.key, mapping=mapping)
        return self.get(queue)

    def clear(self, queue: str, *, concurrency: bool = True, rate: bool = True) -> QueueLimits:
        """Remove the queue's limits (not its pause: see :meth:`resume`)."""
        fields = [f for f, on in ((f"c:{queue}", concurrency), (f"r:{queue}", rate)) if on]
        if fields:
            self.redis.hdel(self.key, *fields)
        return self.get(queue)

    def pause(self, queue: str, seconds: float | None = None) -> QueueLimits:
        """Nothing new of ``queue`` starts on any asyncjobs worker, for ``seconds`` or until resumed."""
        _check_queue(queue)
        self.redis.eval(PAUSE_SCRIPT, 1, self.key, queue, _ms(seconds), "0")
        return self.get(queue)

    def resume(self, queue: str) -> QueueLimits:
        self.redis.hdel(self.key, f"p:{queue}")
        return self.get(queue)

    def throttle(self, queue: str, seconds: float) -> None:
        """Pause ``queue`` for ``seconds`` unless it is already paused for longer."""
        self.redis.eval(PAUSE_SCRIPT, 1, self.key, queue, _ms(seconds), "1")

    def get(self, queue: str) -> QueueLimits:
        fields = [f"c:{queue}", f"r:{queue}", f"p:{queue}"]
        values = self.redis.hmget(self.key, fields)
        raw = {f.encode(): v for f, v in zip(fields, values, strict=True) if v is not None}
        return parse_limits(raw).get(queue, QueueLimits(queue))

    def all(self) -> dict[str, QueueLimits]:
        """Every queue with a limit or pause set (expired pauses included: see ``paused_at``)."""
        return parse_limits(self.redis.hgetall(self.key))

    def server_time(self) -> float:
        sec, usec = self.redis.time()
        return float(sec) + float(usec) / 1e6


def _check_queue(queue: str) -> None:
    if not queue or any(c.isspace() for c in queue):
        raise ValueError(f"invalid queue name {queue!r}: queue names must be non-empty and contain no spaces")


async def throttle_async(redis: Any, keys: Keys, queue: str, seconds: float) -> None:
    """:meth:`QueueControl.throttle` on a ``redis.asyncio`` client (the worker's)."""
    await redis.eval(PAUSE_SCRIPT, 1, limits_key(keys), queue, _ms(seconds), "1")
