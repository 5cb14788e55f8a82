from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from asyncjobs.delivery.errors import PermanentDeliveryError, TransientDeliveryError
from asyncjobs.delivery.ratelimit import LocalRateLimiter, Rate, RedisRateLimiter, parse_rate
from asyncjobs.delivery.retry import RetriesExhaustedError, RetryPolicy, retry_async


def test_backoff_full_jitter_capped_and_retry_after() -> None:
    p = RetryPolicy(max_attempts=10, backoff_base=1.0, backoff_max=8.0)
    assert [p.delay(n, rand=lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert p.delay(3, rand=lambda: 0.0) == 0.0
    assert p.delay(3, rand=lambda: 0.5) == 2.0
    assert p.delay(1, retry_after=5.0, rand=lambda: 0.0) == 5.0  # server hint is a floor
    assert p.delay(1, retry_after=500.0, rand=lambda: 0.0) == 8.0  # ...but capped


async def test_retry_async_sleeps_and_counts() -> None:
    waits: list[float] = []
    calls = 0

    async def sleep(d: float) -> None:
        waits.append(d)

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientDeliveryError("x", retry_after=3.0)
        if calls == 2:
            raise TransientDeliveryError("y")
        return "ok"

    result = await retry_async(op, RetryPolicy(5, 1.0, 10.0), sleep=sleep, rand=lambda: 1.0)
    assert result == ("ok", 3)
    assert waits == [3.0, 2.0]


async def test_retry_async_permanent_and_exhausted() -> None:
    async def sleep(d: float) -> None:
        return None

    async def perm() -> None:
        raise PermanentDeliveryError("nope")

    with pytest.raises(PermanentDeliveryError):
        await retry_async(perm, RetryPolicy(5), sleep=sleep)

    calls = 0

    async def always() -> None:
        nonlocal calls
        calls += 1
        raise TransientDeliveryError("server busy: transient, will be retried")

    with pytest.raises(RetriesExhaustedError) as info:
        await retry_async(always, RetryPolicy(3), sleep=sleep, describe="email x")
    assert calls == 3
    assert "email x failed after 3 attempt(s)" in str(info.value)
    assert "will be retried" not in str(info.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)


async def test_local_bucket_counts() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(Rate(14, 1.0), clock=clock, sleep=clock.sleep)
    await asyncio.gather(*(limiter.acquire() for _ in range(20)))
    assert len(clock.sleeps) == 6  # 14 immediately, 6 had to wait
    assert clock.sleeps == sorted(clock.sleeps)  # later callers wait longer
    assert clock.sleeps[-1] == pytest.approx(6 / 14)
    clock.now += 10  # long idle: bucket refills to the burst, not beyond
    clock.sleeps.clear()
    for _ in range(14):
        await limiter.acquire()
    assert clock.sleeps == []
    await limiter.acquire()
    assert len(clock.sleeps) == 1


def test_parse_rate() -> None:
    assert parse_rate("600/m") == Rate(600, 60.0)
    assert parse_rate("14/s") == Rate(14, 1.0)
    assert parse_rate("100/10s") == Rate(100, 10.0)
    assert parse_rate("") is None
    with pytest.raises(ValueError, match="14/s"):
        parse_rate("fourteen per second")


async def test_redis_limiter_is_shared_across_processes(redis_url: str) -> None:
    # two clients stand for two worker processes sharing one quota
    a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        rate = Rate(5, 60.0)
        la = RedisRateLimiter(a, "asyncjobs:ratelimit:test", rate)
        lb = RedisRateLimiter(b, "asyncjobs:ratelimit:test", rate)
        waits = [await (la if i % 2 else lb).reserve() for i in range(8)]
        assert sum(1 for w in waits if w == 0) == 5
        assert all(w > 0 for w in waits[5:])
        assert waits[5] < waits[6] < waits[7]
        assert waits[5] == pytest.approx(12.0, abs=0.5)  # one slot every 60/5 s
        other = RedisRateLimiter(a, "asyncjobs:ratelimit:other", rate)
        assert await other.reserve() == 0  # keys are independent
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_limiter_acquire_sleeps_for_the_reserved_slot(redis_url: str) -> None:
    clock = FakeClock()
    r = Redis.from_url(redis_url)
    try:
        limiter = RedisRateLimiter(r, "asyncjobs:ratelimit:t2", Rate(2, 3600.0), sleep=clock.sleep)
        for _ in range(3):
            await limiter.acquire()
        assert len(clock.sleeps) == 1 and clock.sleeps[0] > 1000
    finally:
        await r.aclose()


async def test_redis_outage_is_transient(redis_server: object, redis_url: str) -> None:
    if redis_server is None:
        pytest.skip("needs the private redis-server fixture")
    r = Redis.from_url(redis_url)
    try:
        limiter = RedisRateLimiter(r, "asyncjobs:ratelimit:t3", Rate(2, 1.0))
        redis_server.stop()  # type: ignore[attr-defined]
        with pytest.raises(TransientDeliveryError, match="could not reach Redis"):
            await limiter.reserve()
    finally:
        redis_server.start()  # type: ignore[attr-defined]
        await r.aclose()
