"""The worker hash says asyncjobs and its concurrency, in fields stock readers accept."""

from __future__ import annotations

import redis
import rq
from redis.asyncio import Redis
from rq.worker import Worker

from asyncjobs import __version__
from asyncjobs.cli.info import check, collect, format_snapshot
from asyncjobs.protocol.store import RedisStore, WorkerInfo


async def test_registration_with_concurrency_is_read_by_stock_and_info(redis_url: str, sync_redis: redis.Redis) -> None:
    conn = Redis.from_url(redis_url)
    try:
        store = RedisStore(conn, "reg-w")
        await store.register_birth(WorkerInfo("reg-w", ("a", "b"), 480, concurrency=50))
    finally:
        await conn.aclose()
    raw = sync_redis.hgetall("rq:worker:reg-w")
    assert raw[b"version"] == f"{rq.__version__}+asyncjobs.{__version__}.c50".encode()
    assert raw[b"concurrency"] == b"50"
    (stock,) = Worker.all(connection=sync_redis)
    assert stock.name == "reg-w" and stock.version == f"{rq.__version__}+asyncjobs.{__version__}.c50"
    assert [q.name for q in stock.queues] == ["a", "b"] and stock.get_state() == "started"
    snap = collect(sync_redis)
    (view,) = snap.workers
    assert view.kind == "asyncjobs" and view.concurrency == 50 and view.jobs == []
    assert "in flight 0/50" in format_snapshot(snap)
    assert check(snap, name="reg-w")[0]
    assert check(snap, queues=["b", "a"])[0]  # a queue *set*: order does not matter
    assert not check(snap, queues=["a"])[0]
    ok, reason = check(snap, name="reg-w", hostname="elsewhere")
    assert not ok and "on host elsewhere" in reason
    ok, reason = check(snap, name="reg-w", max_heartbeat_age=-1)
    assert not ok and "heart-beat" in reason
