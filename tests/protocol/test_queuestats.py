"""read_queue_sizes agrees with RQ's own counts (real Redis, stock RQ producer)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import redis
from rq import Queue
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from asyncjobs.protocol.queuestats import read_queue_sizes


def test_sizes_match_rqs_own_counts(sync_redis: redis.Redis) -> None:
    q = Queue("stats", connection=sync_redis)
    first = q.enqueue("builtins.print", "a")
    q.enqueue("builtins.print", "b")
    q.enqueue_in(timedelta(minutes=5), "builtins.print", "later")
    q.enqueue("builtins.print", "child", depends_on=first)  # deferred until `first` finishes
    failed = q.enqueue("builtins.print", "f")
    q.remove(failed)
    FailedJobRegistry(queue=q).add(failed, ttl=60, exc_string="boom")
    now = time.time()
    enqueued = sync_redis.hget(f"rq:job:{first.id}", "enqueued_at")
    assert enqueued is not None

    sizes = read_queue_sizes(sync_redis, ["stats", "empty"], now)

    stats, empty = sizes
    assert (stats.queue, empty.queue) == ("stats", "empty")
    assert stats.queued == q.count == 2
    assert stats.started == StartedJobRegistry(queue=q).count
    assert stats.failed == FailedJobRegistry(queue=q).count == 1
    assert stats.scheduled == ScheduledJobRegistry(queue=q).count == 1
    assert stats.deferred == DeferredJobRegistry(queue=q).count == 1
    head_enqueued = datetime.strptime(enqueued.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert stats.oldest_age is not None
    assert abs(stats.oldest_age - (now - head_enqueued.timestamp())) < 1e-3
    assert (empty.queued, empty.started, empty.failed, empty.scheduled, empty.deferred) == (0, 0, 0, 0, 0)
    assert empty.oldest_age is None
    assert read_queue_sizes(sync_redis, [], now) == []


def test_a_head_without_a_readable_timestamp_has_no_age(sync_redis: redis.Redis) -> None:
    sync_redis.rpush("rq:queue:odd", "nohash")
    sync_redis.hset("rq:job:bad", "enqueued_at", "yesterday")
    sync_redis.rpush("rq:queue:odd2", "bad")
    odd, odd2 = read_queue_sizes(sync_redis, ["odd", "odd2"], time.time())
    assert (odd.queued, odd.oldest_age) == (1, None)
    assert (odd2.queued, odd2.oldest_age) == (1, None)
