"""The store's scripts against a real Redis: replays, deadlines and execution records."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
import redis
from redis.asyncio import Redis
from rq import Queue
from rq.job import Job

from asyncjobs.protocol.store import RedisStore
from tests.testsupport.faultproxy import FaultProxy

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    conn = Redis.from_url(redis_url)
    try:
        yield RedisStore(conn, "store-test", heartbeat_ttl=90)
    finally:
        await conn.aclose()


async def test_a_replayed_claim_refreshes_the_deadline_of_what_it_returns(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """A claim whose reply was lost for longer than the heartbeat TTL is answered by its replay with
    the jobs it took: their deadline is renewed then, or RQ's cleanup would take a running job."""
    parsed = urlparse(redis_url)
    with FaultProxy(parsed.hostname or "127.0.0.1", parsed.port or 6379) as proxy:
        conn = Redis.from_url(proxy.url(), retry=None)
        try:
            store = RedisStore(conn, "store-test", heartbeat_ttl=90)
            await store.exchange(None, store.claim_request(["empty"], 1, ["a" * 32]))  # scripts loaded
            job = Queue("default", connection=sync_redis).enqueue("operator.add", 1, 2)
            request = store.claim_request(["default"], 1, ["e" * 32])
            proxy.drop_next_reply(b"rq:asyncjobs:claim:")
            with pytest.raises(redis.exceptions.ConnectionError):
                await store.exchange(None, request)  # it ran; its reply was lost
            member = f"{job.id}:{'e' * 32}"
            assert sync_redis.zscore("rq:wip:default", member)
            sync_redis.zadd("rq:wip:default", {member: 1}, xx=True)  # its deadline passed meanwhile
            replay = await store.exchange(None, request)
        finally:
            await conn.aclose()
    assert [c.job_id for c in replay.jobs] == [job.id]
    assert (sync_redis.zscore("rq:wip:default", member) or 0) > time.time() + 60
    assert Queue("default", connection=sync_redis).count == 0  # and nothing new was claimed


async def test_an_execution_record_lives_as_long_as_its_index_entry(
    store: RedisStore, sync_redis: redis.Redis
) -> None:
    """``Job.get_executions()`` reads rq:executions:<id> and raises for an entry whose record has
    expired: after a crash the record must not expire before the entry does."""
    job = Queue("default", connection=sync_redis).enqueue("operator.add", 1, 2)
    claimed = (await store.exchange(None, store.claim_request(["default"], 1, ["f" * 32]))).jobs[0]
    for _ in range(2):  # as claimed, then as refreshed by a heartbeat
        entry_expires = (sync_redis.zscore(f"rq:executions:{job.id}", claimed.execution_id) or 0) - time.time()
        record_ttl = sync_redis.ttl(f"rq:execution:{job.id}:{claimed.execution_id}")
        assert record_ttl >= entry_expires - 2, (record_ttl, entry_expires)
        assert len(Job.fetch(job.id, connection=sync_redis).get_executions()) == 1
        await store.heartbeat([claimed_running(claimed)], 480)


def claimed_running(claimed):  # type: ignore[no-untyped-def]
    from asyncjobs.protocol.store import Running

    return Running(claimed.queue, claimed.job_id, claimed.execution_id)


async def test_a_claim_stopped_by_a_command_error_records_what_it_began(
    store: RedisStore, sync_redis: redis.Redis
) -> None:
    """The token's record is written once per call, after the claim, and also when a command error
    stops the claim part-way: its replay returns the jobs already taken, and the job whose claim
    failed stays on its queue (docs/rq-protocol.md §11.2, §11.4)."""
    q = Queue("default", connection=sync_redis)
    first, second = q.enqueue("operator.add", 1, 2), q.enqueue("operator.add", 3, 4)
    sync_redis.set(f"rq:executions:{second.id}", "not a sorted set")  # its claim's ZADD fails
    request = store.claim_request(["default"], 2, ["e" * 32, "f" * 32])
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await store.exchange(None, request)
    assert sync_redis.lrange(request.token, 0, -1) == [
        b"0", f"default\t{first.id}\t{'e' * 32}".encode(), f"default\t{second.id}\t{'f' * 32}".encode()]
    replay = await store.exchange(None, request)
    assert [c.job_id for c in replay.jobs] == [first.id]
    assert q.job_ids == [second.id]


async def test_a_claimed_hash_arrives_byte_for_byte(store: RedisStore, sync_redis: redis.Redis) -> None:
    """The claim returns each job's hash packed as JSON by the script: every byte value, and
    non-ASCII queue names, job ids and field names, come back as they are in Redis."""
    q = Queue("fila-çã", connection=sync_redis)
    job = q.enqueue("operator.add", 1, 2)
    jid = "tâche-1"  # RQ refuses such an id, but another client may write one
    sync_redis.rename(f"rq:job:{job.id}", f"rq:job:{jid}")
    sync_redis.lset(q.key, 0, jid)
    binary = bytes(range(256)) * 2
    sync_redis.hset(f"rq:job:{jid}", "champ-é", binary)
    result = await store.exchange(None, store.claim_request(["fila-çã"], 1, ["e" * 32]))
    [claimed] = result.jobs
    assert (claimed.queue, claimed.job_id) == ("fila-çã", jid)
    stored = {k.decode(): v for k, v in sync_redis.hgetall(f"rq:job:{jid}").items()}
    assert claimed.raw["champ-é"] == binary
    assert claimed.raw["data"] == stored["data"]
    assert set(claimed.raw) == set(stored)


async def test_registering_again_after_a_lost_reply_is_not_a_name_clash(store: RedisStore) -> None:
    """A registration whose reply was lost (the fault proxy dropped it: chaos queuelimits) is retried; the
    hash it finds is this process's own, not another worker's (it exited with WorkerNameTaken).  Another
    live process's hash under the name is still refused."""
    from asyncjobs.protocol.store import WorkerInfo, WorkerNameTaken

    info = WorkerInfo(store.worker_name, ("default",), 420, concurrency=4)
    await store.register_birth(info)
    await store.register_birth(info)  # the retry of a call whose reply never came
    assert await store.redis.hget(store.keys.worker(info.name), "death") is None
    await store.redis.hset(store.keys.worker(info.name), "pid", "1")  # as if another process held the name
    with pytest.raises(WorkerNameTaken):
        await store.register_birth(info)


async def test_a_claim_over_many_queues_takes_them_in_order_past_empty_chunks(
    store: RedisStore, sync_redis: redis.Redis
) -> None:
    """Issue 23: listening on many queues, a claim passes over each chunk of empty ones with one
    EXISTS instead of a read per queue; the queues with jobs are still taken in the order given, at
    the chunks' edges too."""
    names = [f"many{i}" for i in range(1, 101)]
    jobs = {}
    for i in (32, 33, 64, 100):  # the end of a chunk, the start of the next, ...
        jobs[i] = Queue(names[i - 1], connection=sync_redis).enqueue("operator.add", i, 0).id
    eids = iter(f"{e:032x}" for e in range(100))
    first = await store.exchange(None, store.claim_request(names, 3, [next(eids) for _ in range(3)]))
    assert [c.job_id for c in first.jobs] == [jobs[32], jobs[33], jobs[64]]
    rest = await store.exchange(None, store.claim_request(names, 3, [next(eids) for _ in range(3)]))
    assert [c.job_id for c in rest.jobs] == [jobs[100]]
    none = await store.exchange(None, store.claim_request(names, 3, [next(eids) for _ in range(3)]))
    assert none.jobs == []

    # 1,000 queues, jobs only in the last: ~32 EXISTS and the last chunk's reads, not 1,000 reads
    names = [f"wide{i}" for i in range(1, 1001)]
    last = Queue(names[-1], connection=sync_redis).enqueue("operator.add", 1, 0).id
    sync_redis.config_resetstat()
    claimed = await store.exchange(None, store.claim_request(names, 3, [next(eids) for _ in range(3)]))
    assert [c.job_id for c in claimed.jobs] == [last]
    stats = sync_redis.info("commandstats")
    reads = stats["cmdstat_lrange"]["calls"]
    exists = stats["cmdstat_exists"]["calls"]
    assert reads <= 10 and exists <= 40, (reads, exists)  # before: 1,001 reads


async def test_queue_names_and_caps_reach_the_claim_as_given(store: RedisStore, sync_redis: redis.Redis) -> None:
    """claim.lua takes the queue names and this worker's caps as JSON arrays: names with quotes,
    backslashes and non-ASCII text arrive byte for byte, and a cap of 0 keeps its queue out."""
    odd, capped = 'naïve"q\\😀', "capped"
    first = Queue(odd, connection=sync_redis).enqueue("operator.add", 1, 0).id
    Queue(capped, connection=sync_redis).enqueue("operator.add", 2, 0)
    request = store.claim_request([capped, odd], 2, ["a" * 32, "b" * 32], [0, -1])
    result = await store.exchange(None, request)
    assert [(c.queue, c.job_id) for c in result.jobs] == [(odd, first)]
    assert sync_redis.zrange(f"rq:wip:{odd}", 0, -1) == [f"{first}:{'a' * 32}".encode()]
    assert Queue(capped, connection=sync_redis).count == 1
