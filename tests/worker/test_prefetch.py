"""--prefetch: jobs claimed ahead of a free slot wait in the worker, start the moment a slot's job ends
(no round trip to Redis in between), and are given back unstarted at a stop."""

from __future__ import annotations

import asyncio

import pytest
import redis
from rq import Queue

from tests.worker.conftest import eventually

J = "tests.worker.jobs"


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


def started_tags() -> list[str]:
    from tests.worker import jobs

    return [tag for tag, _ in jobs.starts]


async def test_a_prefetched_job_starts_when_a_slot_ends_without_a_round_trip(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--concurrency 2 --prefetch 2: four jobs claimed, two executing; the third starts as the first
    ends even while every call to Redis is held back; never more than two execute; each runs once."""
    from asyncjobs.protocol.store import RedisStore
    from tests.worker import jobs

    hold = asyncio.Event()
    hold.set()
    real = RedisStore.exchange

    async def held(self: RedisStore, outcomes, request):  # type: ignore[no-untyped-def]
        await hold.wait()
        return await real(self, outcomes, request)

    monkeypatch.setattr(RedisStore, "exchange", held)
    monkeypatch.setattr("asyncjobs.worker.worker.PREFETCH_STALE", 60.0)  # they wait as long as the test says
    q = Queue("default", connection=sync_redis)
    tags = [f"pf{i}" for i in range(6)]
    ids = [q.enqueue(f"{J}.started_then_wait", t).id for t in tags]
    worker, task = await start_worker(concurrency=2, prefetch=2, burst=True)
    await eventually(lambda: sum(status(sync_redis, i) == "started" for i in ids) == 4, what="4 claimed")
    await eventually(lambda: len(jobs.starts) == 2, what="2 executing")
    await asyncio.sleep(0.1)  # (nothing else may start: the other two wait for a slot)
    assert started_tags() == ["pf0", "pf1"]
    assert q.count == 2

    hold.clear()  # no exchange reaches Redis from here on ...
    jobs.gate("pf0").set()
    # ... yet the first prefetched job starts as pf0 ends
    await eventually(lambda: len(jobs.starts) == 3, what="a prefetched job started without Redis")
    assert started_tags() == ["pf0", "pf1", "pf2"]
    hold.set()
    for t in tags[1:]:
        jobs.gate(t).set()
    await asyncio.wait_for(task, 30)
    assert sorted(started_tags()) == tags
    assert jobs.running["max"] == 2
    assert all(status(sync_redis, i) == "finished" for i in ids)
    assert worker.successful == 6


async def test_a_stop_gives_prefetched_jobs_back_unstarted_in_order(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm stop finishes the jobs executing and puts the prefetched ones back at the front of their
    queue, in their order, never started (as a stock worker leaves jobs it has not taken)."""
    from tests.worker import jobs

    monkeypatch.setattr("asyncjobs.worker.worker.PREFETCH_STALE", 60.0)

    q = Queue("default", connection=sync_redis)
    tags = [f"ws{i}" for i in range(5)]
    ids = [q.enqueue(f"{J}.started_then_wait", t).id for t in tags]
    worker, task = await start_worker(concurrency=2, prefetch=2)
    await eventually(lambda: sum(status(sync_redis, i) == "started" for i in ids) == 4, what="4 claimed")
    await eventually(lambda: len(jobs.starts) == 2, what="2 executing")
    worker.request_stop()
    await eventually(lambda: q.get_job_ids() == ids[2:], what="the two prefetched back in front of the fifth")
    assert [status(sync_redis, i) for i in ids[2:4]] == ["queued", "queued"]
    jobs.gate("ws0").set()
    jobs.gate("ws1").set()
    await asyncio.wait_for(task, 30)
    assert started_tags() == ["ws0", "ws1"]
    assert [status(sync_redis, i) for i in ids] == ["finished", "finished", "queued", "queued", "queued"]
    assert q.started_job_registry.get_job_ids() == []


async def test_stop_job_ends_a_prefetched_job_without_running_it(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rq.command import send_stop_job_command

    from tests.worker import jobs

    monkeypatch.setattr("asyncjobs.worker.worker.PREFETCH_STALE", 60.0)

    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.started_then_wait", f"sj{i}").id for i in range(3)]
    _worker, _task = await start_worker(concurrency=1, prefetch=2)
    await eventually(lambda: all(status(sync_redis, i) == "started" for i in ids), what="3 claimed")
    send_stop_job_command(sync_redis, ids[2])
    await eventually(lambda: status(sync_redis, ids[2]) == "stopped", what="the prefetched job stopped")
    assert started_tags() == ["sj0"]
    jobs.gate("sj0").set()
    jobs.gate("sj1").set()
    await eventually(lambda: status(sync_redis, ids[1]) == "finished", what="the other prefetched job ran")
    assert started_tags() == ["sj0", "sj1"]


async def test_by_default_a_worker_with_long_jobs_claims_no_more_than_its_slots(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default prefetches only while slots free fast (see prefetch_limit): jobs that wait on a gate
    end slowly, so 48 slots hold 48 jobs, one more is claimed when one ends, and the rest stay on the
    queue for other workers.  The rate is of jobs ending, not of claims: the 48 claimed at start-up
    within the first window are no sign that slots free fast."""
    from tests.worker import jobs

    monkeypatch.setattr("asyncjobs.worker.worker.CPU_WINDOW", 0.05)
    monkeypatch.setattr("asyncjobs.worker.worker.PREFETCH_STALE", 60.0)  # the rate alone decides here
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.started_then_wait", "one").id]
    ids += [q.enqueue(f"{J}.started_then_wait", "slow").id for _ in range(53)]
    worker, _task = await start_worker(concurrency=48, block_timeout=0.05)
    await eventually(lambda: len(jobs.starts) == 48, what="48 executing")
    await asyncio.sleep(0.12)  # past the first demand window (FIRST_CPU_WINDOW)
    assert q.count == 6
    jobs.gate("one").set()
    await eventually(lambda: len(jobs.starts) == 49, what="one more, in the slot that freed")
    await asyncio.sleep(0.3)  # several demand windows
    assert q.count == 5
    assert sum(status(sync_redis, i) == "started" for i in ids) == 48
    jobs.gate("slow").set()
    await eventually(lambda: worker.successful == 54, what="54 jobs")


def test_prefetch_limit() -> None:
    """Auto: concurrency/8 at most, and only as many as slots free in PREFETCH_WAIT (a prefetched job
    waits about that long); none below --concurrency 8. --prefetch given always applies."""
    from asyncjobs.worker.config import WorkerConfig
    from asyncjobs.worker.worker import PREFETCH_WAIT, prefetch_limit

    c50 = WorkerConfig(queues=("q",), concurrency=50)
    assert prefetch_limit(c50, 1000.0) == 6  # 50 ms jobs: a slot frees every millisecond
    assert prefetch_limit(c50, 3 / PREFETCH_WAIT) == 3
    assert prefetch_limit(c50, 50.0) == 0  # 1 s jobs
    assert prefetch_limit(WorkerConfig(queues=("q",), concurrency=7), 5000.0) == 0
    assert prefetch_limit(WorkerConfig(queues=("q",), concurrency=400), 1e6) == 50
    assert prefetch_limit(WorkerConfig(queues=("q",), concurrency=1, prefetch=3), 0.0) == 3
    assert prefetch_limit(WorkerConfig(queues=("q",), concurrency=50, prefetch=0), 1e6) == 0
    with pytest.raises(ValueError, match="--prefetch must be 0 or more, got -1"):
        WorkerConfig(queues=("q",), prefetch=-1)


async def test_a_job_claimed_ahead_behind_long_jobs_goes_back_for_another_worker(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job claimed ahead that waits PREFETCH_STALE for a slot (the jobs ahead of it turned out long)
    goes back to the front of its queue, unstarted, and the worker claims none ahead until its next
    demand window: another worker's free slot runs it (the chaos suite's slot probe found this: a
    fleet whose jobs all wait for each other deadlocked on the jobs one worker held back)."""
    from tests.worker import jobs

    monkeypatch.setattr("asyncjobs.worker.worker.PREFETCH_STALE", 0.2)
    monkeypatch.setattr("asyncjobs.worker.worker.CPU_WINDOW", 60.0)  # no new window during the test
    q = Queue("default", connection=sync_redis)
    long = q.enqueue(f"{J}.started_then_wait", "long0")
    jobs.gate("free1").set()
    ahead = q.enqueue(f"{J}.started_then_wait", "free1")
    behind = q.enqueue(f"{J}.started_then_wait", "free2")
    _a, _ = await start_worker(concurrency=1, prefetch=1, name="worker-a")
    await eventually(lambda: status(sync_redis, ahead.id) == "started", what="one claimed ahead")
    await eventually(lambda: q.get_job_ids() == [ahead.id, behind.id], what="given back to the front")
    assert status(sync_redis, ahead.id) == "queued" and started_tags() == ["long0"]
    await asyncio.sleep(0.3)
    assert q.get_job_ids() == [ahead.id, behind.id], "claimed ahead again at once"
    _b, _ = await start_worker(concurrency=1, prefetch=0, name="worker-b")
    await eventually(lambda: status(sync_redis, ahead.id) == "finished", what="run by the other worker")
    assert status(sync_redis, long.id) == "started"
    jobs.gate("free2").set()
    jobs.gate("long0").set()
    await eventually(lambda: status(sync_redis, long.id) == "finished" and status(sync_redis, behind.id) == "finished")
    assert sorted(started_tags()) == ["free1", "free2", "long0"]


async def test_a_job_given_back_unstarted_does_not_count_towards_max_jobs(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-jobs counts jobs run: one claimed ahead and given back (it waited too long) is not one."""
    from tests.worker import jobs

    monkeypatch.setattr("asyncjobs.worker.worker.PREFETCH_STALE", 0.1)
    monkeypatch.setattr("asyncjobs.worker.worker.CPU_WINDOW", 60.0)
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.started_then_wait", f"mj{i}").id for i in range(3)]
    jobs.gate("mj1").set()
    jobs.gate("mj2").set()
    _worker, task = await start_worker(concurrency=1, prefetch=1, max_jobs=3)
    await eventually(lambda: status(sync_redis, ids[1]) == "started", what="one claimed ahead")
    await eventually(lambda: status(sync_redis, ids[1]) == "queued", what="given back")
    jobs.gate("mj0").set()
    await asyncio.wait_for(task, 30)
    assert [status(sync_redis, i) for i in ids] == ["finished", "finished", "finished"]
    assert started_tags() == ["mj0", "mj1", "mj2"]
