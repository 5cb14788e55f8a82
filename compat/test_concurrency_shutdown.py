"""Issue 2: concurrency by behaviour, shutdown semantics, `rq worker -w asyncjobs.AsyncWorker`."""

from __future__ import annotations

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.worker import Worker

from compat import jobs
from compat.support import (
    Launcher,
    WorkerKind,
    fetch,
    find_worker,
    records,
    release,
    unique_name,
    wait_held,
    wait_status,
    worker_hash,
)
from tests.testsupport.workers import wait_for

# ------------------------------------------------------------------ concurrency


def test_fifty_barrier_jobs_complete_together(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(jobs.barrier, launcher.url, "barrier50", 50, 30).id for _ in range(50)]
    proc = launcher.burst(asyncjobs_kind, ["default"], concurrency=50, timeout=90)
    statuses = {fetch(sync_redis, jid).get_status() for jid in ids}
    assert statuses == {"finished"}, proc.output()[-3000:]
    assert sorted(fetch(sync_redis, jid).return_value() for jid in ids) == list(range(1, 51))


def test_sync_barrier_jobs_run_in_threads(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(jobs.sync_barrier, launcher.url, "barrier8", 8, 30).id for _ in range(8)]
    proc = launcher.burst(asyncjobs_kind, ["default"], concurrency=8, timeout=90)
    assert {fetch(sync_redis, jid).get_status() for jid in ids} == {"finished"}, proc.output()[-3000:]


def test_barrier_cannot_complete_with_concurrency_one(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """Negative control: the barrier really detects the absence of concurrency."""
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(jobs.barrier, launcher.url, "barrier2", 2, 1.5).id for _ in range(2)]
    launcher.burst(asyncjobs_kind, ["default"], concurrency=1)
    for jid in ids:
        job = fetch(sync_redis, jid)
        assert job.get_status() == "failed"
        res = job.latest_result()
        assert res is not None and "BarrierTimeout: barrier barrier2" in res.exc_string


def test_in_flight_jobs_seen_through_rq(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """Several jobs in flight: one worker identity, busy, wip has one <jid>:<eid> member per job."""
    q = Queue("default", connection=sync_redis)
    name = unique_name("conc")
    ids = [q.enqueue(jobs.async_hold, launcher.url, f"h{i}").id for i in range(5)]
    proc = launcher.start(asyncjobs_kind, ["default"], "--name", name, concurrency=5)
    wait_held(sync_redis, 5, proc=proc)
    wait_for(lambda: set(StartedJobRegistry(queue=q).get_job_ids()) == set(ids), 10, message="5 in wip")
    pairs = StartedJobRegistry(queue=q).get_job_and_execution_ids()
    assert len(pairs) == 5
    for jid, eid in pairs:
        assert len(eid) == 32
        job = fetch(sync_redis, jid)
        assert job.get_status() == "started"
        assert job.worker_name == name
        assert [e.id for e in job.get_executions()] == [eid]
    workers = Worker.all(connection=sync_redis)
    assert [w.name for w in workers] == [name]
    wait_for(lambda: (w := find_worker(sync_redis, name)) and w.state == "busy", 10, message="busy")
    worker = find_worker(sync_redis, name)
    assert worker is not None and worker.get_current_job_id() in ids
    assert q.count == 0

    release(sync_redis, *[f"h{i}" for i in range(5)])
    for jid in ids:
        wait_status(sync_redis, jid, "finished", proc=proc)
    wait_for(
        lambda: (w := find_worker(sync_redis, name)) and w.successful_job_count == 5, 10, message="count 5"
    )
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    proc.stop()
    assert proc.wait(30) == 0, proc.output()
    assert find_worker(sync_redis, name) is None


# --------------------------------------------------------------------- shutdown


def test_sigterm_drains_in_flight_jobs(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    n = 1 if kind.is_stock else 2
    q = Queue("default", connection=sync_redis)
    name = unique_name("drain")
    held = [q.enqueue(jobs.async_hold, launcher.url, f"d{i}").id for i in range(n)]
    waiting = q.enqueue(jobs.async_hold, launcher.url, "never")
    proc = launcher.start(kind, ["default"], "--name", name, concurrency=n)
    wait_held(sync_redis, n, proc=proc)
    wait_for(lambda: len(StartedJobRegistry(queue=q).get_job_ids()) == n, 10, message="wip")
    proc.stop()
    # RQ records a warm shutdown requested while busy
    wait_for(
        lambda: "shutdown_requested_date" in worker_hash(sync_redis, name),
        10,
        message=lambda: f"shutdown_requested_date\n{proc.output()}",
    )
    release(sync_redis, *[f"d{i}" for i in range(n)])
    assert proc.wait(30) == 0, proc.output()
    for jid in held:
        assert fetch(sync_redis, jid).get_status() == "finished"
    assert fetch(sync_redis, waiting.id).get_status() == "queued"
    assert q.count == 1
    assert sorted(records(sync_redis, "held:started")) == [f"d{i}" for i in range(n)]  # concurrent: any order
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    assert find_worker(sync_redis, name) is None
    assert "death" in worker_hash(sync_redis, name)


def _assert_requeued(conn: redis.Redis, q: Queue, ids: list[str], name: str) -> None:
    for jid in ids:
        job = fetch(conn, jid)
        assert job.get_status() == "queued", (jid, job.latest_result())
        assert job.latest_result() is None  # not failed, not finished
    assert sorted(q.get_job_ids()) == sorted(ids)
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    assert conn.zcard(f"rq:wip:{q.name}") == 0
    assert conn.llen(f"rq:queue:{q.name}:intermediate") == 0
    assert find_worker(conn, name) is None


def test_second_sigterm_puts_jobs_back(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    name = unique_name("cold")
    ids = [q.enqueue(jobs.async_hold, launcher.url, f"c{i}").id for i in range(2)]
    proc = launcher.start(
        asyncjobs_kind, ["default"], "--name", name, "--shutdown-timeout", "60", concurrency=2
    )
    wait_held(sync_redis, 2, proc=proc)
    proc.stop()
    wait_for(lambda: "shutdown_requested_date" in worker_hash(sync_redis, name), 10, message="warm shutdown")
    proc.stop()
    proc.wait(30)
    _assert_requeued(sync_redis, q, ids, name)
    # and they run to completion later, once each
    release(sync_redis, "c0", "c1")
    launcher.burst(asyncjobs_kind, ["default"], concurrency=2)
    assert {fetch(sync_redis, jid).get_status() for jid in ids} == {"finished"}
    assert sorted(records(sync_redis, "held:finished")) == ["c0", "c1"]


def test_grace_period_expiry_puts_jobs_back(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    name = unique_name("grace")
    ids = [q.enqueue(jobs.async_hold, launcher.url, f"g{i}").id for i in range(2)]
    proc = launcher.start(
        asyncjobs_kind, ["default"], "--name", name, "--shutdown-timeout", "1", concurrency=2
    )
    wait_held(sync_redis, 2, proc=proc)
    proc.stop()
    proc.wait(30)
    _assert_requeued(sync_redis, q, ids, name)


# ------------------------------------------------ rq worker -w asyncjobs.AsyncWorker


def test_rq_cli_with_asyncjobs_worker_class(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("emails", connection=sync_redis)
    other = Queue("sms", connection=sync_redis, serializer=None)
    ok = q.enqueue(jobs.add, 2, 3)
    aok = other.enqueue(jobs.async_add, 1, 1)
    bad = q.enqueue(jobs.boom, "via rq cli")
    name = unique_name("rqcli")
    proc = launcher.burst(WorkerKind("rq-asyncjobs-class"), ["emails", "sms"], "--name", name)
    assert fetch(sync_redis, ok.id).return_value() == 5, proc.output()
    assert fetch(sync_redis, aok.id).return_value() == 2
    failed = fetch(sync_redis, bad.id)
    assert failed.get_status() == "failed"
    res = failed.latest_result()
    assert res is not None and res.type == Result.Type.FAILED and "ValueError: via rq cli" in res.exc_string
    for jid in (ok.id, aok.id, bad.id):
        assert fetch(sync_redis, jid).worker_name == name
    assert ok.id in FinishedJobRegistry(queue=q).get_job_ids()
    assert worker_hash(sync_redis, name).get("successful_job_count") == "2"
