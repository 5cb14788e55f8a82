"""Issue 3, differential: retries, repeat, scheduling, dependencies, callbacks, commands, control."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from rq import Callback, Queue, Repeat, Retry
from rq.command import send_kill_horse_command, send_shutdown_command, send_stop_job_command
from rq.job import Dependency, Job
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry
from rq.results import Result

from compat import jobs
from compat.support import (
    FORKING_WORKER,
    Launcher,
    WorkerKind,
    fetch,
    find_worker,
    records,
    unique_name,
    wait_held,
    wait_status,
    worker_hash,
)
from tests.testsupport.workers import run_rq_cli, wait_for


def wait_subscribed(conn: redis.Redis, name: str) -> None:
    """Commands published before the worker subscribes are lost (for stock too): wait for SUBSCRIBE.

    Then wait until the worker has left state ``started`` for its work loop: stock RQ subscribes in
    ``bootstrap()`` but installs its signal handlers only after it, so a shutdown command (which
    sends the worker SIGINT) landing in between aborts it with exit code 1 ("Aborted!"; 29 of 30
    tries when sent at the instant of SUBSCRIBE)."""
    wait_for(
        lambda: conn.pubsub_numsub(f"rq:pubsub:{name}")[0][1] >= 1, 30, message=f"rq:pubsub:{name} subscriber"
    )
    wait_for(
        lambda: conn.hget(f"rq:worker:{name}", "state") not in (None, b"started"), 30,
        message=f"rq:worker:{name} in its work loop",
    )


# ----------------------------------------------------------------------- retries


def test_exception_retries(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    always = q.enqueue(jobs.record_then_boom, url, "always", "x", retry=Retry(max=2))
    eventually = q.enqueue(jobs.fail_until, url, "eventually", 2, retry=Retry(max=3))
    name = unique_name("retry")
    launcher.burst(kind, ["default"], "--name", name, concurrency=1)

    job = fetch(sync_redis, always.id)
    assert job.get_status() == "failed"
    assert job.retries_left == 0
    assert records(sync_redis, "always") == ["x", "x", "x"]
    results = job.results()
    assert [r.type for r in results] == [Result.Type.FAILED]
    assert "ValueError: boom after x" in results[0].exc_string

    ok = fetch(sync_redis, eventually.id)
    assert ok.get_status() == "finished"
    assert ok.return_value() == "ok after 3"
    assert ok.retries_left == 1
    # failed_job_count counts every failed run, retries included (stock quirk)
    wh = worker_hash(sync_redis, name)
    assert wh.get("failed_job_count") == "5"
    assert wh.get("successful_job_count") == "1"


def test_retry_with_interval_goes_through_scheduler(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.fail_until, url, "later", 1, retry=Retry(max=1, interval=1))
    proc = launcher.start(kind, ["default"], "--with-scheduler")
    wait_for(
        lambda: records(sync_redis, "later") == ["run"], 30, message=lambda: f"first run\n{proc.output()}"
    )
    wait_status(sync_redis, job.id, "scheduled", "queued", "started", "finished", proc=proc)
    wait_status(sync_redis, job.id, "finished", timeout=30, proc=proc)
    assert fetch(sync_redis, job.id).return_value() == "ok after 2"
    assert ScheduledJobRegistry(queue=q).get_job_ids() == []
    proc.stop()
    assert proc.wait(30) == 0, proc.output()


def test_retry_scheduled_state_after_failure(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.boom, "later", retry=Retry(max=2, interval=[600, 900]))
    launcher.burst(kind, ["default"])
    got = fetch(sync_redis, job.id)
    assert got.get_status() == "scheduled"
    assert got.retries_left == 1
    assert got.results() == []
    assert ScheduledJobRegistry(queue=q).get_job_ids() == [job.id]
    assert FailedJobRegistry(queue=q).get_job_ids() == []
    when = ScheduledJobRegistry(queue=q).get_scheduled_time(job.id)
    delta = (when - datetime.now(UTC)).total_seconds()
    assert 590 <= delta <= 601, delta


def test_retry_returned_as_value(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.retry_returner, launcher.url, "returned", 2)
    launcher.burst(kind, ["default"])
    got = fetch(sync_redis, job.id)
    assert records(sync_redis, "returned") == ["run", "run", "run"]
    assert [r.type for r in got.results()] == [
        Result.Type.MAX_RETRIES_EXCEEDED,
        Result.Type.RETRIED,
        Result.Type.RETRIED,
    ]
    assert got.get_status() == "failed"
    assert got.number_of_retries == 2
    assert job.id in FailedJobRegistry(queue=q).get_job_ids()


def test_repeat(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.record, launcher.url, "repeat", "r", repeat=Repeat(times=2))
    launcher.burst(kind, ["default"])
    got = fetch(sync_redis, job.id)
    assert records(sync_redis, "repeat") == ["r", "r", "r"]
    assert got.get_status() == "finished"
    assert got.repeats_left == 0
    assert [r.type for r in got.results()] == [Result.Type.SUCCESSFUL] * 3


# -------------------------------------------------------------------- scheduling


def test_enqueue_at_and_in_with_scheduler(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    past = q.enqueue_at(datetime.now(UTC) - timedelta(seconds=5), jobs.add, 1, 1)
    soon = q.enqueue_in(timedelta(seconds=1), jobs.add, 2, 2)
    far = q.enqueue_in(timedelta(hours=1), jobs.add, 3, 3)
    assert fetch(sync_redis, soon.id).get_status() == "scheduled"
    proc = launcher.start(kind, ["default"], "--with-scheduler")
    wait_status(sync_redis, past.id, "finished", proc=proc)
    wait_status(sync_redis, soon.id, "finished", proc=proc)
    assert fetch(sync_redis, soon.id).return_value() == 4
    assert sync_redis.get("rq:scheduler-lock:default") is not None  # RQ's lock, held by our scheduler
    assert fetch(sync_redis, far.id).get_status() == "scheduled"
    assert ScheduledJobRegistry(queue=q).get_job_ids() == [far.id]
    proc.stop()
    assert proc.wait(30) == 0, proc.output()
    assert sync_redis.get("rq:scheduler-lock:default") is None  # released on shutdown


def test_burst_with_scheduler_enqueues_due_jobs(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    due = q.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), jobs.add, 5, 5)
    launcher.burst(kind, ["default"], "--with-scheduler")
    assert fetch(sync_redis, due.id).return_value() == 10


def test_scheduler_respects_foreign_lock(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """Another scheduler holds RQ's lock: this worker must not move the due job."""
    q = Queue("default", connection=sync_redis)
    due = q.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), jobs.add, 5, 5)
    sync_redis.set("rq:scheduler-lock:default", "someone-else", ex=60)
    launcher.burst(kind, ["default"], "--with-scheduler")
    assert fetch(sync_redis, due.id).get_status() == "scheduled"
    assert sync_redis.get("rq:scheduler-lock:default") == b"someone-else"


# ------------------------------------------------------------------ dependencies


def test_dependencies(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    other = Queue("other", connection=sync_redis)
    parent = q.enqueue(jobs.add, 1, 2)
    child = other.enqueue(jobs.add, 10, 20, depends_on=parent)
    by_id = q.enqueue(jobs.add, 3, 3, depends_on=parent.id)
    failing = q.enqueue(jobs.boom, "parent")
    strict = q.enqueue(jobs.add, 0, 1, depends_on=failing)
    allowed = other.enqueue(jobs.add, 0, 2, depends_on=Dependency(jobs=[failing], allow_failure=True))
    both = q.enqueue(jobs.add, 0, 3, depends_on=[parent, failing])
    canceled_parent = q.enqueue(jobs.add, 7, 7)
    orphan = q.enqueue(jobs.add, 8, 8, depends_on=canceled_parent)
    canceled_parent.cancel()
    assert fetch(sync_redis, child.id).get_status() == "deferred"

    launcher.burst(kind, ["default", "other"], concurrency=1)
    assert fetch(sync_redis, child.id).return_value() == 30
    assert fetch(sync_redis, child.id).origin == "other"
    assert fetch(sync_redis, by_id.id).return_value() == 6
    assert fetch(sync_redis, allowed.id).return_value() == 2
    for jid in (strict.id, both.id, orphan.id):
        assert fetch(sync_redis, jid).get_status() == "deferred", jid
    assert set(DeferredJobRegistry(queue=q).get_job_ids()) == {strict.id, both.id, orphan.id}
    assert DeferredJobRegistry(queue=other).get_job_ids() == []


def test_a_child_of_many_parents(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    """A child waits for every one of 150 parents (a set Redis pages through, past its 128-entry
    listpack): enqueued once, after the last; one failed parent holds a strict child back for good."""
    q = Queue("default", connection=sync_redis)
    parents = [q.enqueue(jobs.add, i, 1) for i in range(150)]
    failing = q.enqueue(jobs.boom, "one parent")
    child = q.enqueue(jobs.add, 1, 1, depends_on=parents)
    strict = q.enqueue(jobs.add, 2, 2, depends_on=[*parents, failing])
    tolerant = q.enqueue(jobs.add, 3, 3, depends_on=Dependency(jobs=[*parents, failing], allow_failure=True))
    launcher.burst(kind, ["default"], concurrency=4)
    assert fetch(sync_redis, child.id).return_value() == 2
    assert fetch(sync_redis, tolerant.id).return_value() == 6
    assert fetch(sync_redis, strict.id).get_status() == "deferred"
    assert DeferredJobRegistry(queue=q).get_job_ids() == [strict.id]
    results = [fetch(sync_redis, p.id).results() for p in parents]
    assert [len(r) for r in results] == [1] * 150  # each parent ran once
    assert len(fetch(sync_redis, child.id).results()) == 1


def test_dependency_enqueue_at_front(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    parent = q.enqueue(jobs.record, url, "front", "parent")
    q.enqueue(
        jobs.record, url, "front", "front-child", depends_on=Dependency(jobs=[parent], enqueue_at_front=True)
    )
    q.enqueue(jobs.record, url, "front", "late1")
    q.enqueue(jobs.record, url, "front", "late2")
    launcher.burst(kind, ["default"], concurrency=1)
    assert records(sync_redis, "front") == ["parent", "front-child", "late1", "late2"]


# --------------------------------------------------------------------- callbacks


def test_callbacks(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    ok = q.enqueue(
        jobs.add, 1, 2, on_success=Callback(jobs.on_success_cb), on_failure=Callback(jobs.on_failure_cb)
    )
    bad = q.enqueue(
        jobs.boom, "cb", on_success=Callback(jobs.on_success_cb), on_failure=Callback(jobs.on_failure_cb)
    )
    explode = q.enqueue(jobs.add, 5, 5, on_success=Callback(jobs.raising_success_cb))
    slow = q.enqueue(jobs.add, 6, 6, on_success=Callback(jobs.slow_success_cb, timeout=1))
    launcher.burst(kind, ["default"], timeout=90)

    assert records(sync_redis, f"callbacks:{ok.id}") == ["success:3"]
    assert records(sync_redis, f"callbacks:{bad.id}") == ["failure:ValueError:cb"]
    assert fetch(sync_redis, ok.id).get_status() == "finished"

    # an exception in on_success sends the job down the failure path
    ex = fetch(sync_redis, explode.id)
    assert ex.get_status() == "failed"
    res = ex.latest_result()
    assert res is not None and res.type == Result.Type.FAILED
    assert "success callback exploded on 10" in res.exc_string
    sl = fetch(sync_redis, slow.id)
    assert sl.get_status() == "failed"
    res = sl.latest_result()
    assert res is not None and "JobTimeoutException" in res.exc_string, res.exc_string


def test_async_callbacks(asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    """asyncjobs extension: `async def` callbacks are awaited (stock RQ 2.12 never awaits them)."""
    q = Queue("default", connection=sync_redis)
    aok = q.enqueue(jobs.async_add, 2, 2, on_success=Callback(jobs.async_on_success_cb, timeout=10))
    abad = q.enqueue(jobs.boom, "acb", on_failure=Callback("compat.jobs.async_on_failure_cb"))
    launcher.burst(asyncjobs_kind, ["default"])
    assert records(sync_redis, f"callbacks:{aok.id}") == ["async-success:4"]
    assert records(sync_redis, f"callbacks:{abad.id}") == ["async-failure:ValueError:acb"]
    assert fetch(sync_redis, aok.id).get_status() == "finished"
    assert fetch(sync_redis, abad.id).get_status() == "failed"


# ---------------------------------------------------------------------- commands


def test_send_stop_job_command(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    name = unique_name("stop")
    job = q.enqueue(jobs.async_hold, launcher.url, "s", on_stopped=Callback(jobs.on_stopped_cb))
    other = q.enqueue(jobs.add, 1, 1)
    # SimpleWorker cannot stop a job; the stock reference is the forking Worker
    proc = launcher.start(kind, ["default"], "--name", name, stock_class=FORKING_WORKER, concurrency=2)
    wait_held(sync_redis, 1, proc=proc)
    wait_status(sync_redis, job.id, "started", proc=proc)
    wait_subscribed(sync_redis, name)
    send_stop_job_command(sync_redis, job.id)
    wait_status(sync_redis, job.id, "stopped", proc=proc)
    wait_status(sync_redis, other.id, "finished", proc=proc)
    got = fetch(sync_redis, job.id)
    res = got.latest_result()
    assert res is not None and res.type == Result.Type.FAILED
    assert "stopped" in res.exc_string.lower()
    assert job.id in FailedJobRegistry(queue=q).get_job_ids()
    wait_for(
        lambda: records(sync_redis, f"callbacks:{job.id}") == ["stopped"], 10, message="stopped callback"
    )
    assert records(sync_redis, "held:finished") == []
    wait_for(lambda: q.connection.zcard("rq:wip:default") == 0, 10, message="wip empty")
    proc.stop()
    assert proc.wait(30) == 0, proc.output()


def test_send_kill_horse_command(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    """Stock SIGKILLs the horse; asyncjobs (no horse) cancels the job in current_job. Both: failed, same text."""
    q = Queue("default", connection=sync_redis)
    name = unique_name("kill")
    job = q.enqueue(jobs.async_hold, launcher.url, "k")
    proc = launcher.start(kind, ["default"], "--name", name, stock_class=FORKING_WORKER, concurrency=1)
    wait_held(sync_redis, 1, proc=proc)
    wait_status(sync_redis, job.id, "started", proc=proc)
    wait_for(lambda: (w := find_worker(sync_redis, name)) and w.get_current_job_id() == job.id, 10,
             message="current_job set")
    wait_subscribed(sync_redis, name)
    send_kill_horse_command(sync_redis, name)
    wait_status(sync_redis, job.id, "failed", proc=proc)
    res = fetch(sync_redis, job.id).latest_result()
    assert res is not None and res.type == Result.Type.FAILED
    assert "Work-horse terminated unexpectedly" in res.exc_string
    assert job.id in FailedJobRegistry(queue=q).get_job_ids()
    assert records(sync_redis, "held:finished") == []
    # The worker itself keeps running and takes the next job.
    after = q.enqueue(jobs.add, 2, 3)
    wait_status(sync_redis, after.id, "finished", proc=proc)
    proc.stop()
    assert proc.wait(30) == 0, proc.output()


def test_kill_horse_retries_a_job_with_retries_left(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """Stock's handle_job_failure retries a killed job that has retries left (no failure callback)."""
    q = Queue("default", connection=sync_redis)
    name = unique_name("killr")
    job = q.enqueue(jobs.async_hold, launcher.url, "kr", retry=Retry(max=1))
    proc = launcher.start(kind, ["default"], "--name", name, stock_class=FORKING_WORKER, concurrency=1)
    wait_held(sync_redis, 1, proc=proc)
    wait_for(lambda: (w := find_worker(sync_redis, name)) and w.get_current_job_id() == job.id, 10,
             message="current_job set")
    wait_subscribed(sync_redis, name)
    send_kill_horse_command(sync_redis, name)
    wait_held(sync_redis, 2, proc=proc)  # it runs again
    assert fetch(sync_redis, job.id).retries_left == 0
    sync_redis.set("release:kr", 1)
    wait_status(sync_redis, job.id, "finished", proc=proc)
    assert [r.type for r in fetch(sync_redis, job.id).results()] == [Result.Type.SUCCESSFUL]
    assert job.id not in FailedJobRegistry(queue=q).get_job_ids()
    proc.stop()
    assert proc.wait(30) == 0, proc.output()


def test_send_shutdown_command(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    name = unique_name("shut")
    proc = launcher.start(kind, ["default"], "--name", name)
    wait_for(lambda: find_worker(sync_redis, name), 30, message=lambda: f"registered\n{proc.output()}")
    wait_subscribed(sync_redis, name)
    send_shutdown_command(sync_redis, name)
    assert proc.wait(30) == 0, proc.output()
    assert find_worker(sync_redis, name) is None


def test_suspend_and_resume(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    name = unique_name("susp")
    first = q.enqueue(jobs.async_hold, url, "susp")
    proc = launcher.start(kind, ["default"], "--name", name, concurrency=1)
    wait_held(sync_redis, 1, proc=proc)
    res = run_rq_cli("suspend", "-u", url)
    assert res.returncode == 0, res.stderr
    second = q.enqueue(jobs.add, 4, 4)
    sync_redis.set("release:susp", "1")
    wait_status(sync_redis, first.id, "finished", proc=proc)
    wait_for(
        lambda: (w := find_worker(sync_redis, name)) and w.state == "suspended",
        30,
        message=lambda: f"suspended state\n{proc.output()}",
    )
    assert fetch(sync_redis, second.id).get_status() == "queued"
    assert q.count == 1

    res = run_rq_cli("resume", "-u", url)
    assert res.returncode == 0, res.stderr
    wait_status(sync_redis, second.id, "finished", proc=proc)
    proc.stop()
    assert proc.wait(30) == 0, proc.output()


def test_burst_worker_exits_when_suspended(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.add, 4, 4)
    res = run_rq_cli("suspend", "-u", launcher.url)
    assert res.returncode == 0, res.stderr
    launcher.burst(kind, ["default"], expect_rc=None)  # stock exits 1 with "RQ is currently suspended"
    assert fetch(sync_redis, job.id).get_status() == "queued"
    assert q.count == 1


def test_cancel_and_requeue(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    canceled = q.enqueue(jobs.record, url, "cancel", "ran")
    canceled.cancel()
    flaky = q.enqueue(jobs.fail_until, url, "flaky", 1)
    launcher.burst(kind, ["default"])
    assert records(sync_redis, "cancel") == []
    assert fetch(sync_redis, canceled.id).get_status() == "canceled"
    assert fetch(sync_redis, flaky.id).get_status() == "failed"

    res = run_rq_cli("requeue", "-u", url, "--queue", "default", "--all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert fetch(sync_redis, flaky.id).get_status() == "queued"
    launcher.burst(kind, ["default"])
    got = fetch(sync_redis, flaky.id)
    assert got.get_status() == "finished"
    assert got.return_value() == "ok after 2"
    assert [r.type for r in got.results()] == [Result.Type.SUCCESSFUL, Result.Type.FAILED]
    assert FailedJobRegistry(queue=q).get_job_ids() == []


def test_job_id_unique_and_at_front(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    q.enqueue(jobs.record, url, "order", "first", job_id="custom-1")
    q.enqueue(jobs.record, url, "order", "front", at_front=True)
    try:
        q.enqueue(jobs.record, url, "order", "dup", job_id="custom-1", unique=True)
        raise AssertionError("DuplicateJobError expected")
    except Exception as exc:  # rq.exceptions.DuplicateJobError
        assert type(exc).__name__ == "DuplicateJobError"
    launcher.burst(kind, ["default"], concurrency=1)
    assert records(sync_redis, "order") == ["front", "first"]
    assert Job.fetch("custom-1", connection=sync_redis).return_value() == "first"


def test_burst_runs_a_dependency_chain_to_the_end(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """Each finished parent's child is queued before the burst worker looks again, so one burst run does all."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    parent = q.enqueue(jobs.record, url, "chain", "0")
    chain = [parent]
    for i in range(1, 6):
        chain.append(q.enqueue(jobs.record, url, "chain", str(i), depends_on=chain[-1]))
    launcher.burst(kind, ["default"], concurrency=10)
    assert records(sync_redis, "chain") == [str(i) for i in range(6)]
    assert all(fetch(sync_redis, j.id).get_status() == "finished" for j in chain)
    assert DeferredJobRegistry(queue=q).get_job_ids() == []
