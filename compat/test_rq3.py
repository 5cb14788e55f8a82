"""Issue 17: what RQ 3.0's own worker does, asyncjobs does (docs/rq-protocol.md §13).

Each scenario runs under a stock RQ 3 worker and under asyncjobs and is checked through RQ 3's own
APIs (``RateLimitRegistry``, ``Worker.get_current_executions()``, ``Job.fetch``, the registries).
The tests that need RQ 3 features are skipped when RQ 2.12 is installed; the ones at the end hold
under both majors, each with that major's expectation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue, Repeat, Retry
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.worker import Worker

from compat import jobs
from compat.support import (
    FORKING_WORKER,
    RQ_MAJOR,
    Launcher,
    WorkerKind,
    fetch,
    records,
    release,
    status_of,
    unique_name,
    wait_held,
    wait_status,
)
from compat.test_fleet import _expire_heartbeats, _wait_maintenance_pass_done
from compat.test_options import _Hooks, hook_server  # noqa: F401 - a fixture
from tests.testsupport.workers import wait_for

needs_rq3 = pytest.mark.skipif(RQ_MAJOR < 3, reason="an RQ 3 feature (RQ 2.12 is installed)")


def _limiter(conn: redis.Redis, key: str = "rk") -> Any:
    from rq.rate_limit import RateLimitRegistry

    return RateLimitRegistry(key, connection=conn)


def _rate_limit(key: str = "rk", concurrency: int = 1) -> Any:
    from rq.rate_limit import RateLimit

    return RateLimit(key, concurrency)


def _state(conn: redis.Redis, proc: Any, *job_ids: str, key: str = "rk") -> str:
    """Statuses, the limiter's sets, the queue and the worker's output: for failure messages."""
    limiter = _limiter(conn, key)
    return (f"statuses {[(j, status_of(conn, j)) for j in job_ids]}, allowed {limiter.get_allowed_job_ids()}, "
            f"waiting {limiter.get_rate_limited_job_ids()}, queue {conn.lrange('rq:queue:default', 0, -1)}, "
            f"scheduled {conn.zrange('rq:scheduled:default', 0, -1)}\nworker output:\n{proc.output()}")


def _wait_statuses(conn: redis.Redis, proc: Any, want: dict[str, str], timeout: float = 30.0) -> None:
    wait_for(lambda: all(status_of(conn, j) == s for j, s in want.items()), timeout,
             message=lambda: f"statuses {want}: " + _state(conn, proc, *want))


def _drained(conn: redis.Redis, key: str = "rk") -> bool:
    limiter = _limiter(conn, key)
    return limiter.get_allowed_job_ids() == [] and limiter.get_rate_limited_job_ids() == []


@pytest.fixture
def running(launcher: Launcher) -> Iterator[list[Any]]:
    """Workers a test started and stops itself (SIGTERM) at its end; the launcher kills leftovers."""
    procs: list[Any] = []
    yield procs
    for proc in procs:
        proc.stop()


# ----------------------------------------------------------------------------- rate limits


@needs_rq3
def test_rate_limit_releases_and_promotes_on_success_and_failure(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    limit = _rate_limit()
    first = q.enqueue(jobs.span, url, "spans", "a", rate_limit=limit)
    bad = q.enqueue(jobs.span_then_boom, url, "spans", "b", rate_limit=limit)
    last = q.enqueue(jobs.async_span, url, "spans", "c", rate_limit=limit)
    assert [status_of(sync_redis, j.id) for j in (first, bad, last)] == ["queued", "rate_limited", "rate_limited"]
    assert q.count == 1  # a rate-limited job waits on no queue

    launcher.burst(kind, ["default"], concurrency=5)

    # One at a time although asyncjobs had five slots: each end released the slot and promoted the
    # next.  (Which next: the oldest by enqueue second, ties by job id, RQ's ZPOPMIN order.)
    spans = records(sync_redis, "spans")
    assert spans[:2] == ["+a", "-a"] and sorted(spans) == sorted(["+a", "-a", "+b", "-b", "+c", "-c"])
    assert all(spans[i][1:] == spans[i + 1][1:] for i in range(0, 6, 2)), f"runs overlapped: {spans}"
    assert [fetch(sync_redis, j.id).get_status() for j in (first, bad, last)] == ["finished", "failed", "finished"]
    assert _drained(sync_redis)


@needs_rq3
def test_rate_limit_released_by_stop_execution_and_timeout(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis, running: list[Any]
) -> None:
    from rq.command import send_stop_execution_command

    url = launcher.url
    q = Queue("default", connection=sync_redis)
    limit = _rate_limit()
    stopped = q.enqueue(jobs.hold, url, "stopped", rate_limit=limit)
    slow = q.enqueue(jobs.sleep_async, 30, rate_limit=limit, job_timeout=1)
    after = q.enqueue(jobs.record, url, "after", "ran", rate_limit=limit)
    proc = launcher.start(kind, ["default"], concurrency=5, stock_class=FORKING_WORKER)
    running.append(proc)
    wait_held(sync_redis, 1, proc=proc)
    (execution,) = fetch(sync_redis, stopped.id).get_executions()
    send_stop_execution_command(sync_redis, stopped.id, execution.id)

    # The next two are promoted one after the other (in ZPOPMIN order, so either first).
    _wait_statuses(sync_redis, proc, {after.id: "finished", slow.id: "failed"}, timeout=60)
    assert fetch(sync_redis, stopped.id).get_status() == "stopped"
    slow_job = fetch(sync_redis, slow.id)
    result = slow_job.latest_result()
    assert result is not None and "JobTimeoutException" in (result.exc_string or "")
    assert records(sync_redis, "after") == ["ran"]
    wait_for(lambda: _drained(sync_redis), 10, message="the rate limiter drained")


@needs_rq3
def test_rate_limit_slot_follows_a_scheduled_retry(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis, running: list[Any]
) -> None:
    """A retry with an interval releases the slot (the next job runs meanwhile); RQ 3's scheduler
    re-enqueues the job through the limiter."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    limit = _rate_limit()
    flaky = q.enqueue(jobs.fail_until, url, "flaky", 1, rate_limit=limit, retry=Retry(max=1, interval=1))
    other = q.enqueue(jobs.record, url, "other", "ran", rate_limit=limit)
    proc = launcher.start(kind, ["default"], "--with-scheduler", concurrency=5)
    running.append(proc)
    _wait_statuses(sync_redis, proc, {other.id: "finished", flaky.id: "finished"})
    assert records(sync_redis, "flaky") == ["run", "run"]
    wait_for(lambda: _drained(sync_redis), 10, message="the rate limiter drained")


@needs_rq3
def test_rate_limited_dependent_waits_for_a_slot(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis, running: list[Any]
) -> None:
    """A dependent with a rate limit is never pushed past the limiter: it waits as ``rate_limited``."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    limit = _rate_limit()
    parent = q.enqueue(jobs.add, 1, 1)
    child = q.enqueue(jobs.record, url, "child", "ran", depends_on=parent, rate_limit=limit)
    holder = q.enqueue(jobs.hold, url, "holder", rate_limit=limit)  # takes the slot at enqueue
    assert status_of(sync_redis, child.id) == "deferred" and status_of(sync_redis, holder.id) == "queued"
    proc = launcher.start(kind, ["default"], concurrency=5)
    running.append(proc)
    wait_held(sync_redis, 1, proc=proc)
    wait_status(sync_redis, parent.id, "finished", proc=proc)
    assert status_of(sync_redis, child.id) == "rate_limited"
    assert child.id in _limiter(sync_redis).get_rate_limited_job_ids()
    assert child.id not in q.get_job_ids()
    release(sync_redis, "holder")
    wait_status(sync_redis, child.id, "finished", proc=proc)
    assert records(sync_redis, "child") == ["ran"]
    wait_for(lambda: _drained(sync_redis), 10, message="the rate limiter drained")


@needs_rq3
def test_given_back_job_keeps_its_slot_until_it_runs(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """A cold shutdown puts the job back on its queue as ``queued``: it still holds its slot (the
    waiting job stays waiting), and gives it back once it has run."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    limit = _rate_limit()
    held = q.enqueue(jobs.async_hold, url, "given-back", rate_limit=limit)
    waiting = q.enqueue(jobs.record, url, "waiting", "ran", rate_limit=limit)
    proc = launcher.start(asyncjobs_kind, ["default"], "--shutdown-timeout", "0", concurrency=5)
    wait_held(sync_redis, 1, proc=proc)
    proc.stop()
    assert proc.wait(60) == 0, proc.output()
    assert status_of(sync_redis, held.id) == "queued" and q.get_job_ids() == [held.id]
    assert _limiter(sync_redis).get_allowed_job_ids() == [held.id]
    assert status_of(sync_redis, waiting.id) == "rate_limited"

    release(sync_redis, "given-back")
    launcher.burst(asyncjobs_kind, ["default"])
    assert fetch(sync_redis, held.id).get_status() == "finished"
    assert fetch(sync_redis, waiting.id).get_status() == "finished"
    assert _drained(sync_redis)


@needs_rq3
@pytest.mark.parametrize("rescuer_name", ["stock", "asyncjobs"])
def test_abandoned_rate_limited_job_releases_its_slot_and_sends_its_webhook(
    rescuer_name: str,
    asyncjobs_kind: WorkerKind,
    stock_kind: WorkerKind,
    launcher: Launcher,
    sync_redis: redis.Redis,
    hook_server: tuple[str, _Hooks],  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An asyncjobs worker is SIGKILLed with a rate-limited job in flight; RQ 3's maintenance (in a
    stock worker, or in another asyncjobs worker) fails it, sends its ``failed`` webhook and releases
    its slot, so the waiting job runs."""
    from rq.webhook import Webhook

    base, hooks = hook_server
    monkeypatch.setenv("ASYNCJOBS_ALLOW_WEBHOOK_HOSTS", "127.0.0.1")  # asyncjobs calls loopback only when allowed
    rescuer = stock_kind if rescuer_name == "stock" else asyncjobs_kind
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    limit = _rate_limit()
    doomed = q.enqueue(jobs.hold, url, "doomed", rate_limit=limit,
                       webhooks=[Webhook(f"{base}/abandoned", "failed")])
    waiting = q.enqueue(jobs.record, url, "waiting", "ran", rate_limit=limit)
    victim = launcher.start(asyncjobs_kind, ["default"], "--name", unique_name("victim"), concurrency=5)
    wait_held(sync_redis, 1, proc=victim)
    _wait_maintenance_pass_done(sync_redis, victim, "default")
    victim.kill()
    _expire_heartbeats(sync_redis, "default")
    launcher.burst(rescuer, ["default"], concurrency=2)

    job = fetch(sync_redis, doomed.id)
    assert job.get_status() == "failed"
    assert "AbandonedJobError" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert fetch(sync_redis, waiting.id).get_status() == "finished"
    assert _drained(sync_redis)
    wait_for(lambda: [r["path"] for r in hooks.requests] == ["/abandoned"], 10,
             message=lambda: f"the failed webhook of the abandoned job, got {hooks.requests}")


# ------------------------------------------------------------------- executions, ready, stop


@needs_rq3
def test_every_execution_is_listed_on_the_worker(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """RQ 3's readers list a worker's executions (``<prefix>:worker:<w>:executions``): all of an
    asyncjobs worker's jobs in flight, with ``job_id`` in each execution hash; gone at its death."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    n = 1 if kind.is_stock else 3
    held = [q.enqueue(jobs.hold, url, f"e{i}", ttl=100) for i in range(n)]
    name = unique_name("execs")
    proc = launcher.start(kind, ["default"], "--name", name, concurrency=n)
    wait_held(sync_redis, n, proc=proc)
    wait_for(lambda: all(status_of(sync_redis, j.id) == "started" for j in held), 10, message="all started")

    worker = next(w for w in Worker.all(connection=sync_redis) if w.name == name)
    executions = worker.get_current_executions()
    assert sorted(e.job_id for e in executions) == sorted(j.id for j in held)
    assert worker.current_execution_count == n
    for e in executions:
        assert sync_redis.hget(f"rq:execution:{e.job_id}:{e.id}", "job_id") == e.job_id.encode()
        assert e.worker_name == name
    assert sync_redis.ttl(f"rq:worker:{name}:executions") > 0
    assert all(sync_redis.ttl(f"rq:job:{j.id}") == -1 for j in held)  # the enqueue-time ttl is dropped at start

    release(sync_redis, *[f"e{i}" for i in range(n)])
    wait_for(lambda: all(status_of(sync_redis, j.id) == "finished" for j in held), 30, message="all finished")
    wait_for(lambda: worker.get_current_executions(refresh=True) == [], 10, message="no executions left")
    proc.stop()
    assert proc.wait(60) == 0, proc.output()
    assert not sync_redis.exists(f"rq:worker:{name}:executions")
    assert all(400 < sync_redis.ttl(f"rq:job:{j.id}") <= 500 for j in held)


@needs_rq3
def test_ready_dependent_left_by_a_crash_is_enqueued(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis, running: list[Any]
) -> None:
    """A stock RQ 3 worker that dies between its two dependents steps leaves the child
    ``ready_to_enqueue`` in the ReadyJobRegistry; the next maintenance enqueues it."""
    from rq.job import JobStatus
    from rq.registry import ReadyJobRegistry

    url = launcher.url
    q = Queue("default", connection=sync_redis)
    parent = q.enqueue(jobs.add, 1, 1)
    child = q.enqueue(jobs.record, url, "ready", "ran", depends_on=parent)
    q.remove(parent)
    parent.set_status(JobStatus.FINISHED)
    with sync_redis.pipeline() as pipe:  # step 1 of a stock RQ 3 parent's success, then a "crash"
        pipe.watch(parent.dependents_key)
        q.move_dependents_to_ready(parent, pipeline=pipe)
        pipe.execute()
    assert status_of(sync_redis, child.id) == "ready_to_enqueue"
    assert ReadyJobRegistry(queue=q).get_job_ids(cleanup=False) == [child.id]

    proc = launcher.start(kind, ["default"], concurrency=2)
    running.append(proc)
    wait_status(sync_redis, child.id, "finished", proc=proc)
    assert records(sync_redis, "ready") == ["ran"]
    assert ReadyJobRegistry(queue=q).get_job_ids(cleanup=False) == []


@needs_rq3
def test_group_cleanup_takes_rqs_lock(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.add, 1, 1)
    launcher.burst(kind, ["default"], "--maintenance-interval", "120")
    assert fetch(sync_redis, job.id).get_status() == "finished"
    wait_for(lambda: sync_redis.exists("rq:clean_groups"), 10, message="rq:clean_groups")
    assert 100 < sync_redis.ttl("rq:clean_groups") <= 119  # SET NX EX (maintenance interval - 1)


# ------------------------------------------------------------- both majors, each its own way


def test_repeat_intervals_follow_the_installed_rq(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """``Repeat(times=2, interval=[100, 200])`` after the first run: RQ 2.12 waits 200 s (the list
    from its end) and keeps the list; RQ 3 waits 100 s and stores ``[200]``."""
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.add, 1, 2, repeat=Repeat(times=2, interval=[100, 200]))
    before = time.time()
    launcher.burst(kind, ["default"])
    score = sync_redis.zscore(ScheduledJobRegistry(queue=q).key, job.id)
    assert score is not None
    got = fetch(sync_redis, job.id)
    assert got.repeats_left == 1
    if RQ_MAJOR >= 3:
        assert before + 95 <= score <= time.time() + 101 and got.repeat_intervals == [200]
    else:
        assert before + 195 <= score <= time.time() + 201 and got.repeat_intervals == [100, 200]


def test_returned_retry_at_front_follows_the_installed_rq(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """A job returning ``Retry(max=1, enqueue_at_front=True)``: RQ 3 runs it again before the job
    queued behind it; RQ 2.12 requeues it at the back."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    q.enqueue(jobs.retry_once_then, url, "order", "front", True)
    q.enqueue(jobs.record, url, "order", "other")
    launcher.burst(kind, ["default"], concurrency=1)
    expected = ["run", "run", "other"] if RQ_MAJOR >= 3 else ["run", "other", "run"]
    assert records(sync_redis, "order") == expected


def test_result_ttl_zero_and_the_results_stream(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """A ``result_ttl=0`` job is deleted when it succeeds; RQ 3 deletes its results stream (here a
    RETRIED entry from its first run) with it, RQ 2.12 leaves the stream."""
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.retry_once_then, url, "zero", "done", result_ttl=0)
    launcher.burst(kind, ["default"])
    assert records(sync_redis, "zero") == ["run", "run"]
    assert not sync_redis.exists(f"rq:job:{job.id}")
    assert sync_redis.exists(f"rq:results:{job.id}") == (0 if RQ_MAJOR >= 3 else 1)
    assert StartedJobRegistry(queue=q).get_job_ids() == []
