"""Issue 3: mixed fleets of stock and asyncjobs workers, and recovery after SIGKILL."""

from __future__ import annotations

import time

import pytest
import redis
from rq import Queue, Retry
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.worker import Worker

from compat import jobs
from compat.support import (
    Launcher,
    WorkerKind,
    fetch,
    records,
    release,
    unique_name,
    wait_held,
    wait_status,
)
from tests.testsupport.workers import WorkerProcess, wait_for


@pytest.mark.slow
def test_mixed_fleet_runs_each_job_exactly_once(
    asyncjobs_kind: WorkerKind, stock_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    url = launcher.url
    names = {
        "stock-1": launcher.start(stock_kind, ["high", "low"], "--name", "fleet-stock-1"),
        "stock-2": launcher.start(stock_kind, ["low", "high"], "--name", "fleet-stock-2"),
        "aj-1": launcher.start(asyncjobs_kind, ["high", "low"], "--name", "fleet-aj-1", concurrency=10),
        "aj-2": launcher.start(asyncjobs_kind, ["low"], "--name", "fleet-aj-2", concurrency=5),
    }
    wait_for(
        lambda: Worker.count(connection=sync_redis) == 4,
        30,
        message=lambda: "4 workers registered\n" + "\n".join(p.output() for p in names.values()),
    )
    high = Queue("high", connection=sync_redis)
    low = Queue("low", connection=sync_redis)
    tokens = []
    ids = []
    for i in range(300):
        token = f"t{i}"
        tokens.append(token)
        q = high if i % 3 == 0 else low
        fn = jobs.async_record if i % 2 else jobs.record
        ids.append(q.enqueue(fn, url, "fleet", token).id)
    wait_for(
        lambda: sync_redis.llen("fleet") >= 300 and high.count == 0 and low.count == 0,
        90,
        interval=0.2,
        message=lambda: f"300 executions (got {sync_redis.llen('fleet')})",
    )
    wait_for(
        lambda: (
            len(FinishedJobRegistry(queue=high).get_job_ids())
            + len(FinishedJobRegistry(queue=low).get_job_ids())
            == 300
        ),
        30,
        message="300 finished",
    )
    for proc in names.values():
        proc.stop()
    for proc in names.values():
        assert proc.wait(30) == 0, proc.output()

    got = records(sync_redis, "fleet")
    assert sorted(got) == sorted(tokens), "some job ran twice or never"
    by_worker: dict[str, int] = {}
    for jid in ids:
        job = fetch(sync_redis, jid)
        assert job.get_status() == "finished"
        by_worker[job.worker_name] = by_worker.get(job.worker_name, 0) + 1
    assert any(n.startswith("fleet-stock") for n in by_worker), by_worker
    assert any(n.startswith("fleet-aj") for n in by_worker), by_worker
    assert StartedJobRegistry(queue=high).get_job_ids() == []
    assert StartedJobRegistry(queue=low).get_job_ids() == []
    assert Worker.count(connection=sync_redis) == 0


def _expire_heartbeats(conn: redis.Redis, queue: str) -> None:
    """Pretend the heartbeat deadline has passed (instead of waiting 60-90 s)."""
    for member in conn.zrange(f"rq:wip:{queue}", 0, -1):
        conn.zadd(f"rq:wip:{queue}", {member: int(time.time()) - 10})


def _wait_maintenance_pass_done(conn: redis.Redis, proc: WorkerProcess, queue: str) -> None:
    """An asyncjobs worker cleans registries at start-up in a thread, beside its first jobs (a stock
    worker does it before its first job).  Killed in the middle of that pass, it leaves RQ's
    ``rq:clean_registries:<q>`` lock for its 899 s TTL and no other worker cleans the queue until then
    (test_killed_mid_maintenance_jobs_are_recovered_once_rqs_cleaning_lock_expires): wait until the
    pass has ended."""
    wait_for(
        lambda: f"cleaning registries for queue {queue}" in proc.output()
        and not conn.exists(f"rq:clean_registries:{queue}"),
        30, message=lambda: f"start-up maintenance pass done\n{proc.output()}",
    )


@pytest.mark.parametrize("direction", ["asyncjobs-killed", "stock-killed"])
def test_abandoned_job_recovered_by_other_worker(
    direction: str,
    asyncjobs_kind: WorkerKind,
    stock_kind: WorkerKind,
    launcher: Launcher,
    sync_redis: redis.Redis,
) -> None:
    victim, rescuer = (
        (asyncjobs_kind, stock_kind) if direction == "asyncjobs-killed" else (stock_kind, asyncjobs_kind)
    )
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    doomed = q.enqueue(jobs.hold, url, "doomed")
    retried = q.enqueue(jobs.hold, url, "retried", retry=Retry(max=1))
    name = unique_name("victim")
    proc = launcher.start(victim, ["default"], "--name", name, concurrency=2)
    wait_held(sync_redis, 1, proc=proc)
    if not victim.is_stock:
        wait_held(sync_redis, 2, proc=proc)
    else:  # the stock SimpleWorker runs one at a time; the second stays queued
        assert q.count == 1
    if not victim.is_stock:
        _wait_maintenance_pass_done(sync_redis, proc, "default")
    running = set(StartedJobRegistry(queue=q).get_job_ids(cleanup=False))
    proc.kill()
    # the in-flight job(s) stay "started" until the heartbeat deadline passes
    for jid in running:
        assert fetch(sync_redis, jid).get_status() == "started"
    _expire_heartbeats(sync_redis, "default")
    release(sync_redis, "doomed", "retried")  # re-runs of either job finish at once
    launcher.burst(rescuer, ["default"], concurrency=2)

    assert doomed.id in running
    job = fetch(sync_redis, doomed.id)
    assert job.get_status() == "failed"
    res = job.latest_result()
    assert res is not None and res.type == Result.Type.FAILED
    assert "AbandonedJobError" in res.exc_string
    assert doomed.id in FailedJobRegistry(queue=q).get_job_ids()
    # the job with a retry left is retried (if it was running) or simply run
    assert fetch(sync_redis, retried.id).get_status() == "finished"
    assert fetch(sync_redis, retried.id).return_value() == "retried"
    assert StartedJobRegistry(queue=q).get_job_ids() == []


def test_killed_worker_job_not_lost_between_pop_and_start(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """After SIGKILL nothing is lost: every job is queued, started (abandoned) or done."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(jobs.async_hold, url, f"k{i}").id for i in range(6)]
    proc = launcher.start(asyncjobs_kind, ["default"], concurrency=3)
    wait_held(sync_redis, 3, proc=proc)
    proc.kill()
    queued = set(q.get_job_ids())
    started = set(StartedJobRegistry(queue=q).get_job_ids(cleanup=False))
    intermediate = {v.decode() for v in sync_redis.lrange("rq:queue:default:intermediate", 0, -1)}
    assert set(ids) <= queued | started | intermediate
    assert len(started) == 3
    for jid in started:
        wait_status(sync_redis, jid, "started", timeout=1)


def test_killed_mid_maintenance_jobs_are_recovered_once_rqs_cleaning_lock_expires(
    asyncjobs_kind: WorkerKind, stock_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """SIGKILL while the start-up maintenance pass holds RQ's cleaning lock (a slow pass: 20,000
    expired entries whose jobs are gone): the lock outlives the worker (RQ's 899 s TTL, the same for
    a stock worker killed while cleaning), so a rescuer's maintenance skips the queue; once it has
    expired (simulated, like the heartbeat deadline), the abandoned jobs are recovered as usual."""
    pipe = sync_redis.pipeline()
    for i in range(20000):
        pipe.zadd("rq:wip:default", {f"ghost-{i}:e": 1})
    pipe.execute()
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    doomed = q.enqueue(jobs.hold, url, "doomed")
    retried = q.enqueue(jobs.hold, url, "retried", retry=Retry(max=1))
    proc = launcher.start(asyncjobs_kind, ["default"], "--name", unique_name("victim"), concurrency=2)
    wait_held(sync_redis, 2, proc=proc)
    wait_for(lambda: sync_redis.exists("rq:clean_registries:default"), 30, message="maintenance pass running")
    proc.kill()
    _expire_heartbeats(sync_redis, "default")
    release(sync_redis, "doomed", "retried")
    launcher.burst(stock_kind, ["default"], concurrency=2)
    assert fetch(sync_redis, doomed.id).get_status() == "started"  # the lock kept the rescuer out
    assert sync_redis.ttl("rq:clean_registries:default") > 800

    sync_redis.delete("rq:clean_registries:default")  # its TTL has run out
    launcher.burst(stock_kind, ["default"], concurrency=2)
    assert fetch(sync_redis, doomed.id).get_status() == "failed"
    assert fetch(sync_redis, retried.id).get_status() == "finished"  # its retry ran
