"""Issue 2, differential: the same stock-RQ scenario under a stock worker and under asyncjobs.

Every assertion goes through RQ 2.12's own APIs (or the raw keys RQ documents),
so asyncjobs passes only if it is indistinguishable from a stock worker.
"""

from __future__ import annotations

import time

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.worker import Worker

from compat import jobs
from compat.support import (
    Launcher,
    WorkerKind,
    fetch,
    find_worker,
    records,
    release,
    rq_info,
    unique_name,
    wait_held,
    wait_status,
    worker_hash,
)
from tests.testsupport.workers import wait_for


def test_success_and_failure_read_back_through_rq(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    ok = q.enqueue(jobs.add, 2, 3)
    aok = q.enqueue(jobs.async_add, 20, 22)
    method = q.enqueue(jobs.Greeter("hi").greet, "ann")
    instance = q.enqueue(jobs.Adder(10), 5)
    by_name = q.enqueue("compat.jobs.add", 1, 2)
    none = q.enqueue(jobs.noop)
    bad = q.enqueue(jobs.boom, "boom 7")
    abad = q.enqueue(jobs.async_boom, "async boom 8")
    name = unique_name()
    before = time.time()
    launcher.burst(kind, ["default"], "--name", name)

    expected = {ok.id: 5, aok.id: 42, method.id: "hi ann", instance.id: 15, by_name.id: 3, none.id: None}
    for jid, value in expected.items():
        job = fetch(sync_redis, jid)
        assert job.get_status() == "finished", jid
        assert job.return_value() == value
        res = job.latest_result()
        assert res is not None and res.type == Result.Type.SUCCESSFUL
        assert job.worker_name == name
        assert job.started_at is not None and job.ended_at is not None
        assert before - 1 <= job.started_at.timestamp() <= job.ended_at.timestamp() <= time.time() + 1
        assert len(job.results()) == 1

    for jid, text, fn in [
        (bad.id, "ValueError: boom 7", "boom"),
        (abad.id, "ValueError: async boom 8", "async_boom"),
    ]:
        job = fetch(sync_redis, jid)
        assert job.get_status() == "failed"
        res = job.latest_result()
        assert res is not None and res.type == Result.Type.FAILED
        assert res.exc_string.startswith("Traceback (most recent call last):"), res.exc_string
        assert res.exc_string.rstrip().endswith(text), res.exc_string
        assert f"in {fn}" in res.exc_string and "compat/jobs.py" in res.exc_string
        assert job.return_value() is None
        assert job.worker_name == name
        assert job.ended_at is not None

    assert q.count == 0
    assert set(FinishedJobRegistry(queue=q).get_job_ids()) == set(expected)
    assert set(FailedJobRegistry(queue=q).get_job_ids()) == {bad.id, abad.id}
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    assert sync_redis.llen("rq:queue:default:intermediate") == 0
    # the dead worker's hash: counts and death, as stock writes them
    wh = worker_hash(sync_redis, name)
    assert wh.get("successful_job_count") == "6"
    assert wh.get("failed_job_count") == "2"
    assert "death" in wh
    assert find_worker(sync_redis, name) is None  # deregistered


def test_result_ttl_variants(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    zero = q.enqueue(jobs.add, 1, 1, result_ttl=0)
    forever = q.enqueue(jobs.add, 1, 2, result_ttl=-1)
    short = q.enqueue(jobs.add, 1, 3, result_ttl=100)
    default = q.enqueue(jobs.add, 1, 4)
    launcher.burst(kind, ["default"])

    try:
        Job.fetch(zero.id, connection=sync_redis)
        raise AssertionError("result_ttl=0 job still exists")
    except NoSuchJobError:
        pass
    finished = FinishedJobRegistry(queue=q)
    assert zero.id not in finished.get_job_ids()
    assert sync_redis.exists(f"rq:results:{zero.id}") == 0

    assert fetch(sync_redis, forever.id).return_value() == 3
    assert sync_redis.ttl(f"rq:job:{forever.id}") == -1
    assert sync_redis.ttl(f"rq:results:{forever.id}") == -1
    assert sync_redis.zscore("rq:finished:default", forever.id) == float("inf")

    assert 0 < sync_redis.ttl(f"rq:job:{short.id}") <= 100
    assert 0 < sync_redis.ttl(f"rq:results:{short.id}") <= 100
    score = sync_redis.zscore("rq:finished:default", short.id)
    assert score is not None and time.time() + 50 <= score <= time.time() + 101

    assert 400 < sync_redis.ttl(f"rq:job:{default.id}") <= 500
    assert fetch(sync_redis, default.id).return_value() == 5


def test_worker_results_ttl_option(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(jobs.add, 1, 1)
    launcher.burst(kind, ["default"], "--results-ttl", "50")
    assert fetch(sync_redis, job.id).get_status() == "finished"
    assert 0 < sync_redis.ttl(f"rq:job:{job.id}") <= 50


def test_failure_ttl_and_ttl(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    with_ttl = q.enqueue(jobs.boom, "a", failure_ttl=300)
    without = q.enqueue(jobs.boom, "b")
    keep = q.enqueue(jobs.boom, "c", failure_ttl=-1)
    ttl_job = q.enqueue(jobs.add, 2, 2, ttl=5, result_ttl=-1)
    assert 0 < sync_redis.ttl(f"rq:job:{ttl_job.id}") <= 5
    launcher.burst(kind, ["default"])

    assert 0 < sync_redis.ttl(f"rq:job:{with_ttl.id}") <= 300
    assert 0 < sync_redis.ttl(f"rq:results:{with_ttl.id}") <= 300
    score = sync_redis.zscore("rq:failed:default", with_ttl.id)
    assert score is not None and time.time() + 240 <= score <= time.time() + 301

    # failure_ttl unset: the job hash lives a year, the results stream has no TTL (stock quirk)
    assert sync_redis.ttl(f"rq:job:{without.id}") > 364 * 86400
    assert sync_redis.ttl(f"rq:results:{without.id}") == -1
    assert fetch(sync_redis, without.id).get_status() == "failed"

    assert sync_redis.zscore("rq:failed:default", keep.id) == -1
    assert fetch(sync_redis, keep.id).get_status() == "failed"

    # ttl is queue time only: the worker PERSISTs at start, so result_ttl=-1 keeps it forever
    assert sync_redis.ttl(f"rq:job:{ttl_job.id}") == -1
    assert fetch(sync_redis, ttl_job.id).return_value() == 4


def test_meta_written_by_job_is_not_clobbered(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    sync_job = q.enqueue(jobs.set_meta, "progress", 50, meta={"tenant": "acme"})
    async_job = q.enqueue(jobs.async_set_meta, "stage", "done", meta={"tenant": "beta"})
    launcher.burst(kind, ["default"])
    for job_obj, expected in [
        (sync_job, {"tenant": "acme", "progress": 50}),
        (async_job, {"tenant": "beta", "stage": "done"}),
    ]:
        job = fetch(sync_redis, job_obj.id)
        assert job.get_status() == "finished", job.latest_result()
        assert job.return_value() == job_obj.id
        assert job.get_meta() == expected


def test_json_serializer(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis, serializer=JSONSerializer)
    ok = q.enqueue(jobs.echo, {"a": [1, 2], "b": None}, meta={"m": 1})
    bad = q.enqueue(jobs.boom, "json boom")
    launcher.burst(kind, ["default"], "-S", "json")
    job = fetch(sync_redis, ok.id, JSONSerializer)
    assert job.get_status() == "finished"
    assert job.return_value() == {"a": [1, 2], "b": None}
    assert job.get_meta() == {"m": 1}
    raw = sync_redis.xrevrange(f"rq:results:{ok.id}", count=1)[0][1]
    assert raw[b"return_value"] == b"eyJhIjogWzEsIDJdLCAiYiI6IG51bGx9"  # base64(json.dumps(value))
    failed = fetch(sync_redis, bad.id, JSONSerializer)
    assert failed.get_status() == "failed"
    res = failed.latest_result()
    assert res is not None and "ValueError: json boom" in res.exc_string


def test_unserializable_return_value(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    a = q.enqueue(jobs.unserializable)
    b = q.enqueue(jobs.async_unserializable)
    launcher.burst(kind, ["default"])
    for jid in (a.id, b.id):
        job = fetch(sync_redis, jid)
        assert job.get_status() == "finished"
        assert job.return_value() == "Unserializable return value"


def test_priority_order_across_queues(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    low = Queue("low", connection=sync_redis)
    high = Queue("high", connection=sync_redis)
    for i in range(3):
        low.enqueue(jobs.record, url, "order", f"low{i}")
    for i in range(3):
        high.enqueue(jobs.record, url, "order", f"high{i}")
    launcher.burst(kind, ["high", "low"], concurrency=1)
    assert records(sync_redis, "order") == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_dequeue_strategy_round_robin(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    for qname in ("a", "b"):
        q = Queue(qname, connection=sync_redis)
        for i in range(3):
            q.enqueue(jobs.record, url, "order", f"{qname}{i}")
    launcher.burst(kind, ["a", "b"], "--dequeue-strategy", "round_robin", concurrency=1)
    assert records(sync_redis, "order") == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_dequeue_strategy_random_runs_everything_once(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    url = launcher.url
    tokens = []
    for qname in ("a", "b", "c"):
        q = Queue(qname, connection=sync_redis)
        for i in range(4):
            tokens.append(f"{qname}{i}")
            q.enqueue(jobs.record, url, "order", f"{qname}{i}")
    launcher.burst(kind, ["a", "b", "c"], "--dequeue-strategy", "random", concurrency=1)
    got = records(sync_redis, "order")
    assert sorted(got) == sorted(tokens)
    for qname in ("a", "b", "c"):  # within one queue, FIFO still holds
        assert [t for t in got if t[0] == qname] == [f"{qname}{i}" for i in range(4)]


def test_max_jobs(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(jobs.add, i, i).id for i in range(5)]
    proc = launcher.start(kind, ["default"], "--max-jobs", "2")  # not burst: must exit by itself
    assert proc.wait(60) == 0, proc.output()
    statuses = [fetch(sync_redis, jid).get_status() for jid in ids]
    assert statuses.count("finished") == 2, statuses
    assert statuses.count("queued") == 3, statuses
    assert q.count == 3


def test_registration_during_execution_and_rq_info(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """--name, Worker.all(), rq info, wip member <jid>:<eid>, execution keys, then deregistration."""
    url = launcher.url
    name = unique_name("named")
    q = Queue("default", connection=sync_redis)
    proc = launcher.start(kind, ["default"], "--name", name)
    worker = wait_for(
        lambda: find_worker(sync_redis, name), 30, message=lambda: f"worker {name}\n{proc.output()}"
    )
    assert worker.queue_names() == ["default"]
    assert worker.pid == proc.pid

    job = q.enqueue(jobs.hold, url, "reg")
    wait_held(sync_redis, 1, proc=proc)
    wait_for(lambda: (w := find_worker(sync_redis, name)) and w.state == "busy", 10, message="state busy")
    worker = find_worker(sync_redis, name)
    assert worker is not None
    assert worker.get_current_job_id() == job.id
    running = fetch(sync_redis, job.id)
    assert running.get_status() == "started"
    assert running.worker_name == name
    assert running.started_at is not None
    started = StartedJobRegistry(queue=q)
    assert started.get_job_ids() == [job.id]
    ((jid, eid),) = started.get_job_and_execution_ids()
    assert jid == job.id
    assert sync_redis.zrange("rq:wip:default", 0, -1) == [f"{job.id}:{eid}".encode()]
    executions = running.get_executions()
    assert [e.id for e in executions] == [eid]
    assert executions[0].worker_name == name
    assert sync_redis.exists(f"rq:execution:{job.id}:{eid}") == 1
    # heartbeat deadline well in the future: nobody may consider the job abandoned
    score = sync_redis.zscore("rq:wip:default", f"{job.id}:{eid}")
    assert score is not None and score > time.time() + 20
    info = rq_info(url)
    assert name in info and "busy" in info, info
    assert f"{name} " in rq_info(url, "-W")
    assert q.count == 0

    release(sync_redis, "reg")
    wait_status(sync_redis, job.id, "finished", proc=proc)
    wait_for(lambda: (w := find_worker(sync_redis, name)) and w.state == "idle", 10, message="state idle")
    worker = find_worker(sync_redis, name)
    assert worker is not None
    assert worker.successful_job_count == 1
    assert worker.get_current_job_id() is None
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    assert sync_redis.exists(f"rq:execution:{job.id}:{eid}") == 0
    assert "idle" in rq_info(url, "-W")

    proc.stop()
    assert proc.wait(30) == 0, proc.output()
    assert find_worker(sync_redis, name) is None
    assert Worker.count(connection=sync_redis) == 0
    assert "death" in worker_hash(sync_redis, name)


def test_timeouts(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    sync_slow = q.enqueue(jobs.sleep_sync, 4, job_timeout=1)
    async_slow = q.enqueue(jobs.sleep_async, 30, job_timeout=1)
    unlimited = q.enqueue(jobs.sleep_async, 0.2, job_timeout=-1)
    launcher.burst(kind, ["default"])
    for jid in (sync_slow.id, async_slow.id):
        job = fetch(sync_redis, jid)
        assert job.get_status() == "failed"
        res = job.latest_result()
        assert res is not None and res.type == Result.Type.FAILED
        assert "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in res.exc_string, (
            res.exc_string
        )
    assert FailedJobRegistry(queue=q).get_job_ids().count(sync_slow.id) == 1
    assert fetch(sync_redis, unlimited.id).return_value() == 0.2


def test_timeout_error_raised_by_job_is_not_a_job_timeout(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    a = q.enqueue(jobs.raises_timeout_error)
    b = q.enqueue(jobs.async_raises_timeout_error)
    launcher.burst(kind, ["default"])
    for jid, text in [
        (a.id, "TimeoutError: user code timed out talking to something"),
        (b.id, "TimeoutError: async user code timed out"),
    ]:
        job = fetch(sync_redis, jid)
        assert job.get_status() == "failed"
        res = job.latest_result()
        assert res is not None
        assert res.exc_string.rstrip().endswith(text), res.exc_string
        assert "JobTimeoutException" not in res.exc_string
