"""Rate limiting for the delivery jobs: one concept, two scopes.

* :func:`parse_rate` reads ``"14/s"``, ``"600/m"``...; :class:`Rate` is the parsed value.
* :class:`LocalRateLimiter`: a token bucket for one process (``RATE_LIMIT_SCOPE=process``).
* :class:`RedisRateLimiter`: GCRA in a Lua script on the Redis server's clock, shared by every
  process using the same key, so that all workers together never exceed a provider's quota
  (``RATE_LIMIT_SCOPE=redis``).  Each call reserves the next slot atomically and returns how
  long the caller must wait for it.

Each of them is a :class:`RateLimiter`: ``await limiter.acquire()``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from asyncjobs.delivery.errors import TransientDeliveryError
from asyncjobs.protocol.scripts import lua

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LocalRateLimiter", "Rate", "RateLimiter", "RedisRateLimiter", "UnlimitedRateLimiter", "parse_rate"]

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``period`` seconds; bursts of up to ``count`` are allowed."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate | None:
    """Parse ``"14/s"``, ``"600/m"``, ``"1000/h"``, ``"100/10s"``; empty means unlimited (None)."""
    if text is None or not str(text).strip():
        return None
    match = _RATE_RE.match(str(text).lower())
    unit = match.group(3) if match else ""
    if unit not in _UNITS and unit.endswith("s") and unit[:-1] in _UNITS:
        unit = unit[:-1]
    if not match or unit not in _UNITS:
        raise ValueError(
            f"invalid rate {text!r}: use COUNT/UNIT such as '14/s', '600/m', '1000/h' or '100/10s' "
            "(leave empty for no limit)"
        )
    count = int(match.group(1))
    seconds = _UNITS[unit] * (float(match.group(2)) if match.group(2) else 1.0)
    if count <= 0 or seconds <= 0:
        raise ValueError(f"invalid rate {text!r}: count and period must be positive")
    return Rate(count, seconds)


class RateLimiter(Protocol):
    """Wait until one more event is allowed."""

    async def acquire(self) -> None: ...


class UnlimitedRateLimiter:
    async def acquire(self) -> None:
        return None

    def __repr__(self) -> str:
        return "UnlimitedRateLimiter()"


class LocalRateLimiter:
    """Token bucket for one process (one event loop at a time).

    Tokens are reserved synchronously before any await, so concurrent callers
    on the same loop never over-spend; a caller that went into debt sleeps
    until its token is due.  ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(rate.count)
        self._last = clock()

    def reserve(self) -> float:
        """Take one token now; return how long the caller must wait before using it."""
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(float(self.rate.count), self._tokens + elapsed * self.rate.per_second)
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate.per_second

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)

    def __repr__(self) -> str:
        return f"LocalRateLimiter({self.rate})"




class RedisRateLimiter:
    """Rate limit shared by every process using the same Redis ``key``."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        rate: Rate,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.redis = redis
        self.key = key
        self.rate = rate
        self._sleep = sleep
        self._script: Any = redis.register_script(lua("ratelimit_gcra.lua"))
        self._interval_ms = 1000.0 * rate.period / rate.count
        self._tolerance_ms = self._interval_ms * (rate.count - 1)

    async def reserve(self) -> float:
        """Reserve the next slot; return seconds to wait before using it."""
        try:
            raw = await self._script(keys=[self.key], args=[self._interval_ms, self._tolerance_ms])
        except (RedisError, OSError) as exc:
            raise TransientDeliveryError(
                f"rate limiter could not reach Redis for {self.key!r} ({type(exc).__name__}: {exc}): "
                "transient, will be retried"
            ) from None
        return float(raw) / 1000.0

    async def acquire(self) -> None:
        wait = await self.reserve()
        if wait > 0:
            await self._sleep(wait)

    def __repr__(self) -> str:
        return f"RedisRateLimiter(key={self.key!r}, rate={self.rate})"
