"""Fleet-wide rate limiting through Redis (GCRA in a Lua script, server clock).

Same interface as :class:`asyncjobs.delivery.ratelimit.LocalRateLimiter`
(``await limiter.acquire()``), used when ``RATE_LIMIT_SCOPE=redis`` so that
all workers together never exceed a provider's quota.  Each call reserves the
next slot atomically and returns how long the caller must wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from asyncjobs.delivery.errors import TransientDeliveryError
from asyncjobs.delivery.ratelimit import Rate

__all__ = ["RedisRateLimiter"]

# GCRA with reservation: KEYS[1] holds the theoretical arrival time (TAT, ms).
# ARGV[1] = emission interval (ms), ARGV[2] = burst tolerance (ms).
# Returns the wait in ms (as a string, to keep fractions) before the reserved slot.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now + tolerance + 1000))
return string.format('%.3f', wait)
"""


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
        self._script: Any = redis.register_script(_GCRA_LUA)
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
