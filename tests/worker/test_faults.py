"""Fault paths of the engine (issue 9): cancellation, replays, poison entries, races.

Each test reproduces one bug reliably (many jobs or many rounds per run) against a
real Redis, with the worker in-process so the fault can be placed exactly.
"""

from __future__ import annotations

import asyncio
import time

import redis
from rq import Queue
from rq.job import Job

from tests.worker.conftest import eventually

J = "tests.worker.jobs"


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


def statuses(conn: redis.Redis, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in ids:
        s = status(conn, i) or "missing"
        out[s] = out.get(s, 0) + 1
    return out


async def test_stop_job_is_enforced_when_a_cancel_is_swallowed(
    redis_url: str, sync_redis: redis.Redis, start_worker
) -> None:
    """Bug 1: redis-py's wait_for can swallow a single cancel; stop-job must still stop the job."""
    q = Queue("default", connection=sync_redis)
    n = 30
    worker, task = await start_worker(concurrency=n)
    for round_ in range(3):
        ids = [q.enqueue(f"{J}.ping_forever", redis_url).id for _ in range(n)]
        await eventually(lambda ids=ids: statuses(sync_redis, ids).get("started") == n, what=f"round {round_}: all started")
        await asyncio.sleep(0.05)  # let them spin on their round trips
        for job_id in ids:
            assert worker.stop_job(job_id)
        await eventually(
            lambda ids=ids: statuses(sync_redis, ids).get("stopped") == n,
            timeout=20,
            what=f"round {round_}: every job stopped (now {statuses(sync_redis, ids)})",
        )
    assert not task.done()


def _executions_ok(conn: redis.Redis, job_id: str) -> bool:
    """Stock's own reader: raises ValueError when an execution listed for the job has no hash."""
    Job.fetch(job_id, connection=conn).get_executions()
    return True


async def test_replayed_finish_does_not_rerun_a_retry(
    redis_url: str, sync_redis: redis.Redis, proxy, start_worker
) -> None:
    """Bug 2: the call storing a retry outcome ran, its reply was lost: a re-send must not retry twice."""
    from rq import Retry

    q = Queue("default", connection=sync_redis)
    worker, task = await start_worker(redis_url=proxy.url() + "?socket_timeout=1", concurrency=2)
    await eventually(lambda: sync_redis.sismember("rq:workers", f"rq:worker:{worker.name}"), what="worker up")
    for round_ in range(3):
        key = f"runs:{round_}"
        job = q.enqueue(f"{J}.ledger_incr_and_fail", redis_url, key, retry=Retry(max=1))
        proxy.drop_next_reply(job.id.encode())  # the first call that stores this job's outcome
        await eventually(lambda job=job: status(sync_redis, job.id) == "failed", timeout=20, what="job failed for good")
        assert proxy.armed() == 0, "the fault never fired: the test did not test anything"
        assert int(sync_redis.get(key) or 0) == 2, f"Retry(max=1) must run exactly twice (round {round_})"
        assert len(Job.fetch(job.id, connection=sync_redis).results()) == 1  # one FAILED Result
        assert q.count == 0 and sync_redis.zcard("rq:wip:default") == 0
    assert proxy.stats["dropped"] == 3
    assert not task.done()


async def test_replayed_claim_runs_what_it_claimed(
    redis_url: str, sync_redis: redis.Redis, proxy, start_worker
) -> None:
    """Bug 2: a claim ran, its reply was lost: a re-send must run those jobs, not strand them started."""
    q = Queue("default", connection=sync_redis)
    worker, task = await start_worker(redis_url=proxy.url() + "?socket_timeout=1", concurrency=10)
    await eventually(lambda: sync_redis.hget(f"rq:worker:{worker.name}", "state") == b"idle", what="worker idle")
    proxy.drop_next_reply(b"EVALSHA")
    ids = [q.enqueue(f"{J}.add", i, i).id for i in range(5)]
    await eventually(
        lambda: statuses(sync_redis, ids).get("finished") == 5,
        timeout=20,
        what=f"all 5 finished (now {statuses(sync_redis, ids)})",
    )
    assert proxy.stats["dropped"] == 1
    for job_id in ids:
        job = Job.fetch(job_id, connection=sync_redis)
        assert len(job.results()) == 1, "each job ran exactly once"
        assert _executions_ok(sync_redis, job_id)
    assert sync_redis.zcard("rq:wip:default") == 0
    assert not task.done()


async def test_poison_queue_entry_fails_alone(
    redis_url: str, sync_redis: redis.Redis, start_worker, caplog
) -> None:
    """Bug 3: an id whose rq:job key is not a hash must not strand the jobs claimed with it."""
    q = Queue("default", connection=sync_redis)
    first = q.enqueue(f"{J}.add", 1, 1).id
    sync_redis.set("rq:job:poison-1", "not a hash")
    sync_redis.rpush("rq:queue:default", "poison-1")
    sync_redis.sadd("rq:job:poison-2", "a set")
    sync_redis.rpush("rq:queue:default", "poison-2")
    rest = [q.enqueue(f"{J}.add", i, i).id for i in range(3)]
    _worker, task = await start_worker(concurrency=10, burst=True)
    await asyncio.wait_for(task, 30)
    assert statuses(sync_redis, [first, *rest]) == {"finished": 4}
    for job_id in [first, *rest]:
        assert len(Job.fetch(job_id, connection=sync_redis).results()) == 1
    assert q.count == 0 and sync_redis.zcard("rq:wip:default") == 0
    assert "rq:job:poison-1 is a Redis string" in caplog.text
    assert "rq:job:poison-2 is a Redis set" in caplog.text
    assert sync_redis.get("rq:job:poison-1") == b"not a hash"  # reported, not touched


async def test_cold_stop_during_a_claim_gives_the_claimed_jobs_back(
    redis_url: str, sync_redis: redis.Redis, proxy, start_worker
) -> None:
    """Bug 4: jobs whose claim is in flight when the cold stop comes are given back, none lost."""
    q = Queue("default", connection=sync_redis)
    worker, task = await start_worker(redis_url=proxy.url(), concurrency=10)
    await eventually(lambda: sync_redis.hget(f"rq:worker:{worker.name}", "state") == b"idle", what="worker idle")
    proxy.delay_next_reply(b"EVALSHA", 1.0)
    ids = [q.enqueue(f"{J}.wait_gate", "never", job_id=f"job-{i}").id for i in range(3)]
    await eventually(lambda: proxy.armed() == 0, what="the claim sent (its reply held back)")
    worker.request_cold_stop()
    await asyncio.wait_for(task, 30)
    assert q.get_job_ids() == ids  # back, in their order
    assert statuses(sync_redis, ids) == {"queued": 3}
    assert sync_redis.zcard("rq:wip:default") == 0
    assert all(sync_redis.hget(f"rq:job:{i}", "worker_name") == b"" for i in ids)


async def test_cold_stop_gives_jobs_back_in_their_order(sync_redis: redis.Redis, start_worker) -> None:
    """Bug 8: a queue 1000..1042 comes back as 1000..1042, with the fields a requeue clears cleared."""
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.wait_gate", "never", job_id=f"job-{n}").id for n in range(1000, 1043)]
    later = [q.enqueue(f"{J}.add", 1, 1, job_id=f"later-{n}").id for n in range(3)]
    worker, task = await start_worker(concurrency=len(ids))
    await eventually(lambda: statuses(sync_redis, ids).get("started") == len(ids), what="all started")
    worker.request_stop()
    worker.request_cold_stop()
    await asyncio.wait_for(task, 30)
    assert q.get_job_ids() == ids + later
    for job_id in ids:
        fields = sync_redis.hmget(f"rq:job:{job_id}", "status", "worker_name", "started_at", "ended_at")
        assert fields == [b"queued", b"", b"", b""], job_id
        assert _executions_ok(sync_redis, job_id)


async def test_heartbeats_never_resurrect_a_finished_execution(
    sync_redis: redis.Redis, start_worker
) -> None:
    """Bug 6: a heartbeat racing a finish must not re-create the execution records it removed."""
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.aadd", i, i).id for i in range(600)]
    _worker, task = await start_worker(concurrency=50, burst=True, job_monitoring_interval=0.005)
    await asyncio.wait_for(task, 60)
    assert statuses(sync_redis, ids) == {"finished": 600}
    for job_id in ids:
        assert _executions_ok(sync_redis, job_id)
    assert sync_redis.keys("rq:execution:*") == []
    assert sync_redis.keys("rq:executions:*") == []


async def test_an_interrupt_racing_the_end_of_a_sync_job_never_kills_a_pool_thread(monkeypatch) -> None:
    """Bug 5: the cancel path decides a sync job is running, then interrupts its thread; if the job
    ends in between, the interrupt must not land in the pool's own code (killing the thread, so the
    next job never runs) nor in the next job.

    The race is made certain rather than likely: the event loop's thread is held up right where it
    raises the interrupt (the executor's one call into CPython for that), long enough for the job
    to end."""
    import sys
    import threading

    from asyncjobs.worker import executor as executor_module
    from asyncjobs.worker.context import JobHandle
    from asyncjobs.worker.executor import Executor
    from tests.worker import jobs

    stray: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: stray.append(f"pool thread died: {a.exc_type}"))
    monkeypatch.setattr(sys, "unraisablehook", lambda u: stray.append(f"raised outside any job: {u.exc_type}"))
    name = "_set_async_exc" if hasattr(executor_module, "_set_async_exc") else "_raise_in_thread"
    raise_in_thread = getattr(executor_module, name)
    loop_thread = threading.get_ident()

    def late(thread_id: int, exc_type: type[BaseException] | None) -> None:
        if threading.get_ident() == loop_thread and exc_type is not None:
            time.sleep(0.1)  # the job thread runs on meanwhile: its job ends
        raise_in_thread(thread_id, exc_type)

    monkeypatch.setattr(executor_module, name, late)
    started = threading.Event()

    def job() -> str:
        started.set()
        return str(jobs.spin_for(0.01))

    executor = Executor(1)
    handle = JobHandle("x", {}, lambda: None, None)
    try:
        for _ in range(3):
            started.clear()
            work = asyncio.ensure_future(executor.run(job, (), {}, handle=handle))
            while not started.is_set():
                await asyncio.sleep(0.001)
            work.cancel()
            await asyncio.wait({work})
            # The pool still has its one thread, and the next job runs untouched.
            assert await asyncio.wait_for(executor.run(jobs.add, (2, 3), {}, handle=handle), 5) == 5
        assert stray == []
    finally:
        executor.shutdown()


async def test_a_worker_restarted_under_its_name_claims_afresh(sync_redis: redis.Redis, start_worker) -> None:
    """A claim token from an earlier process of the same worker name must never be taken for a replay
    of this process's claim (fixed names: systemd templates, Kubernetes, --processes children).

    One job at a time, the first process makes 4 claims and leaves its last token behind; the second,
    with more work, reaches its own 4th claim while jobs are still queued."""
    q = Queue("default", connection=sync_redis)
    for round_, n in enumerate((3, 10, 10)):
        ids = [q.enqueue(f"{J}.add", i, round_).id for i in range(n)]
        _worker, task = await start_worker(name="fixed-name", burst=True, concurrency=1)
        await asyncio.wait_for(task, 30)
        assert statuses(sync_redis, ids) == {"finished": n}, f"process {round_} of the same name"


async def test_a_burst_worker_gives_up_when_redis_goes_away_mid_run(sync_redis: redis.Redis, proxy, start_worker) -> None:
    """``--burst-redis-wait`` bounds a burst run whose Redis goes away after it started, not only one that
    cannot start: the worker exits with RedisUnreachable (status 1) instead of retrying for ever, and the
    job whose outcome could not be stored stays in StartedJobRegistry for RQ's maintenance to recover."""
    from rq.registry import StartedJobRegistry

    from asyncjobs.connection import RedisUnreachable
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "mid-run")
    _worker, task = await start_worker(redis_url=proxy.url(), burst=True, burst_redis_wait=1.0, concurrency=2)
    await eventually(lambda: status(sync_redis, held.id) == "started", what="job started")
    proxy.close()  # Redis refuses connections from here on
    jobs.gate("mid-run").set()
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(task, 60)
    except RedisUnreachable as exc:
        assert "--burst-redis-wait 1" in str(exc), exc
    else:
        raise AssertionError("the burst worker ended without saying it gave up on Redis")
    assert time.monotonic() - t0 < 20  # the wait, then one more such wait to store what it holds
    assert status(sync_redis, held.id) == "started"
    assert held.id in StartedJobRegistry("default", connection=sync_redis).get_job_ids(cleanup=False)
