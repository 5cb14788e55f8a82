"""The scripts' RQ 3 duties against a real Redis, without a worker (docs/rq-protocol.md §13).

Job hashes are written the way RQ writes them (``Job.to_dict()``), with RQ 3's rate-limit fields added
by hand, so these run under either installed RQ major; the store is told which major to write for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis
from redis.asyncio import Redis
from rq.job import Job

from asyncjobs.protocol import transitions
from asyncjobs.protocol.codec import parse_job_hash
from asyncjobs.protocol.keys import Keys
from asyncjobs.protocol.store import Claimed, Outcomes, RedisStore, Running, WorkerInfo

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def aconn(redis_url: str) -> AsyncIterator[Redis]:
    conn = Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        await conn.aclose()


def put_job(conn: redis.Redis, keys: Keys, job_id: str, *, queue: str | None = "default", status: str = "queued",
            rate_limit: tuple[str, int] | None = None, **fields: str) -> None:
    """A job hash as a producer writes it (under ``keys``' prefix), pushed onto ``queue`` if given."""
    job = Job.create("operator.add", args=(1, 2), id=job_id, connection=conn, origin="default")
    mapping = {k: v for k, v in job.to_dict().items() if v is not None}
    mapping.update(status=status, **fields)
    if rate_limit:
        mapping.update(rate_limit_key=rate_limit[0], rate_limit_concurrency=str(rate_limit[1]))
    conn.hset(keys.job(job_id), mapping=mapping)  # type: ignore[arg-type]
    if queue:
        conn.rpush(keys.queue(queue), job_id)


def status(conn: redis.Redis, keys: Keys, job_id: str) -> str | None:
    raw = conn.hget(keys.job(job_id), "status")
    return raw.decode() if isinstance(raw, bytes) else None


def rl(conn: redis.Redis, keys: Keys, key: str = "rk") -> tuple[list[str], list[str]]:
    allowed = [m.decode() for m in conn.zrange(f"{keys.rate_limit(key)}:allowed", 0, -1)]
    waiting = [m.decode() for m in conn.zrange(f"{keys.rate_limit(key)}:rate_limited", 0, -1)]
    return allowed, waiting


async def claim_one(store: RedisStore, eid: str = "e" * 32) -> Claimed:
    (claimed,) = (await store.exchange(None, store.claim_request(["default"], 1, [eid]))).jobs
    return claimed


def outcome(claimed: Claimed, kind: str = "success") -> transitions.Transition:
    record = parse_job_hash(claimed.job_id, claimed.raw)
    now = datetime.now(UTC)
    ex = transitions.Execution(claimed.job_id, claimed.execution_id, claimed.queue, "w", now, now, now)
    out = transitions.success(record, ex, None, 500) if kind == "success" else transitions.failure(record, ex, "boom")
    return dataclasses.replace(out, rate_limit_key=claimed.rate_limit_key)  # what the worker does


async def test_every_key_is_under_the_stores_prefix(aconn: Redis, sync_redis: redis.Redis) -> None:
    keys = Keys("{tenant}")
    store = RedisStore(aconn, "w", keys=keys)
    await store.register_birth(WorkerInfo("w", ("default",)))
    put_job(sync_redis, keys, "parent")
    put_job(sync_redis, keys, "child", queue=None, status="deferred", dependency_ids='["parent"]')
    sync_redis.sadd(f"{keys.job('parent')}:dependents", "child")
    sync_redis.sadd(f"{keys.prefix}:job::child:dependencies", "parent")
    claimed = await claim_one(store)
    assert sync_redis.smembers(keys.worker_executions("w")) == {f"parent:{claimed.execution_id}".encode()}
    assert sync_redis.hget(keys.execution("parent", claimed.execution_id), "job_id") == b"parent"
    sync_redis.delete(keys.worker_executions("w"))  # lost (e.g. expired with the worker key): a heartbeat heals it
    await store.heartbeat([Running("default", "parent", claimed.execution_id)], 90)
    assert sync_redis.smembers(keys.worker_executions("w")) == {f"parent:{claimed.execution_id}".encode()}
    assert 0 < sync_redis.ttl(keys.worker_executions("w")) <= 90
    await store.finish(Outcomes([outcome(claimed)], state="idle"))
    assert status(sync_redis, keys, "parent") == "finished" and status(sync_redis, keys, "child") == "queued"
    assert sync_redis.lrange(keys.queue("default"), 0, -1) == [b"child"]
    assert not sync_redis.exists(keys.worker_executions("w"))  # the last member went with the finish
    await store.register_death(("default",))
    outside = [k for k in sync_redis.scan_iter() if not k.startswith(b"{tenant}:")]
    assert outside == []


async def test_release_promotes_the_next_waiting_job_and_drops_what_is_not_a_job(
    aconn: Redis, sync_redis: redis.Redis
) -> None:
    """RQ 3's RELEASE after a failure: the waiting set's oldest entries are popped; a missing hash and a
    key that is not a hash (job data is hostile) are dropped, the first real waiting job is promoted."""
    keys = Keys("rq")
    store = RedisStore(aconn, "w", rq_major=3)
    put_job(sync_redis, keys, "holder", rate_limit=("rk", 1))
    put_job(sync_redis, keys, "next", queue=None, status="rate_limited", rate_limit=("rk", 1))
    sync_redis.set(keys.job("poison"), "not a hash")
    sync_redis.hset(keys.rate_limit("rk"), "concurrency", 1)
    sync_redis.zadd(f"{keys.rate_limit('rk')}:allowed", {"holder": 1})
    sync_redis.zadd(f"{keys.rate_limit('rk')}:rate_limited", {"gone": 1, "poison": 2, "next": 3})
    claimed = await claim_one(store)
    assert claimed.rate_limit_key == "rk"
    await store.finish(Outcomes([outcome(claimed, "failure")]))
    assert status(sync_redis, keys, "holder") == "failed"
    assert rl(sync_redis, keys) == (["next"], [])
    assert status(sync_redis, keys, "next") == "queued"
    assert sync_redis.lrange(keys.queue("default"), 0, -1) == [b"next"]


async def test_a_limiter_key_of_another_type_never_blocks_an_outcome(aconn: Redis, sync_redis: redis.Redis) -> None:
    keys = Keys("rq")
    store = RedisStore(aconn, "w", rq_major=3)
    put_job(sync_redis, keys, "j", rate_limit=("rk", 1))
    sync_redis.set(f"{keys.rate_limit('rk')}:allowed", "a string")
    claimed = await claim_one(store)
    await store.finish(Outcomes([outcome(claimed)]))
    assert status(sync_redis, keys, "j") == "finished"
    assert sync_redis.get(f"{keys.rate_limit('rk')}:allowed") == b"a string"


@pytest.mark.parametrize("major", [2, 3])
async def test_a_rate_limited_dependent_by_rq_major(major: int, aconn: Redis, sync_redis: redis.Redis) -> None:
    """Under RQ 3 a ready dependent with a rate limit waits for a slot (here: none free); RQ 2.12's
    readers cannot read ``rate_limited``, so for them it is pushed as stock RQ 2.12 pushes it."""
    keys = Keys("rq")
    store = RedisStore(aconn, "w", rq_major=major)
    put_job(sync_redis, keys, "parent")
    put_job(sync_redis, keys, "child", queue=None, status="deferred", dependency_ids='["parent"]',
            rate_limit=("rk", 1))
    sync_redis.zadd(keys.deferred("default"), {"child": 1})
    sync_redis.sadd(f"{keys.job('parent')}:dependents", "child")
    sync_redis.zadd(f"{keys.rate_limit('rk')}:allowed", {"other": 1})  # the only slot is taken
    claimed = await claim_one(store)
    await store.finish(Outcomes([outcome(claimed)]))
    assert not sync_redis.zscore(keys.deferred("default"), "child")
    if major >= 3:
        assert status(sync_redis, keys, "child") == "rate_limited"
        assert rl(sync_redis, keys) == (["other"], ["child"])
        assert sync_redis.llen(keys.queue("default")) == 0
        assert sync_redis.hget(keys.rate_limit("rk"), "concurrency") == b"1"
        assert sync_redis.smembers(keys.rate_limit_keys) == {b"rk"}
    else:
        assert status(sync_redis, keys, "child") == "queued"
        assert sync_redis.lrange(keys.queue("default"), 0, -1) == [b"child"]
