"""Issue 2 item 6: bad input fails the job readably and the worker carries on."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from compat import jobs
from compat.support import Launcher, WorkerKind, fetch, latest


def _failed_with(conn: redis.Redis, job_id: str, *fragments: str) -> str:
    res = latest(conn, job_id)
    assert res is not None, f"no result for {job_id}"
    assert res.type == Result.Type.FAILED
    for fragment in fragments:
        assert fragment in res.exc_string, res.exc_string
    return str(res.exc_string)


def test_unimportable_function_and_undecodable_data(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    q = Queue("default", connection=sync_redis)
    missing_attr = q.enqueue("compat.jobs.does_not_exist", 1)
    missing_module = q.enqueue("compat.no_such_module.func", 1)
    wrong_serializer = Queue("default", connection=sync_redis, serializer=JSONSerializer).enqueue(
        jobs.add, 1, 2
    )
    garbage = q.enqueue(jobs.add, 1, 2)
    sync_redis.hset(f"rq:job:{garbage.id}", "data", b"\x00garbage, neither zlib nor pickle\xff")
    after = q.enqueue(jobs.add, 20, 22)
    launcher.burst(kind, ["default"])

    assert fetch(sync_redis, missing_attr.id).get_status() == "failed"
    _failed_with(sync_redis, missing_attr.id, "does_not_exist")
    assert fetch(sync_redis, missing_module.id).get_status() == "failed"
    _failed_with(sync_redis, missing_module.id, "no_such_module")
    for jid in (wrong_serializer.id, garbage.id):
        assert fetch(sync_redis, jid).get_status() == "failed"
        _failed_with(sync_redis, jid, "DeserializationError")
    assert set(FailedJobRegistry(queue=q).get_job_ids()) == {
        missing_attr.id,
        missing_module.id,
        wrong_serializer.id,
        garbage.id,
    }
    assert fetch(sync_redis, after.id).return_value() == 42
    assert q.count == 0


def test_missing_job_hash_is_skipped(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    ghost = q.enqueue(jobs.add, 1, 1)
    sync_redis.delete(f"rq:job:{ghost.id}")  # e.g. its ttl expired while queued
    # a hash without `data` (heartbeat-race leftover): RQ treats it as missing too
    sync_redis.hset("rq:job:no-data-job", "last_heartbeat", "2026-01-01T00:00:00.000000Z")
    sync_redis.rpush("rq:queue:default", "no-data-job")
    after = q.enqueue(jobs.add, 2, 2)
    launcher.burst(kind, ["default"])
    assert fetch(sync_redis, after.id).return_value() == 4
    assert q.count == 0
    assert sync_redis.exists(f"rq:job:{ghost.id}") == 0
    assert ghost.id not in FailedJobRegistry(queue=q).get_job_ids()
    assert sync_redis.zcard("rq:wip:default") == 0
    intermediate = sync_redis.lrange("rq:queue:default:intermediate", 0, -1)
    if kind.is_stock:
        # stock quirk: left for maintenance to remove
        assert intermediate == [ghost.id.encode(), b"no-data-job"]
    else:
        assert intermediate == []  # issue 2: dropped from the intermediate list


def test_malformed_hashes_fail_and_worker_carries_on(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """A stock worker quits on these; asyncjobs must fail each job readably and continue."""
    q = Queue("default", connection=sync_redis)
    bad_date = q.enqueue(jobs.add, 1, 1)
    sync_redis.hset(f"rq:job:{bad_date.id}", "created_at", "2026-01-01 00:00:00+00:00")
    bad_cb = q.enqueue(jobs.add, 1, 2)
    sync_redis.hset(f"rq:job:{bad_cb.id}", "success_callback_timeout", "")
    bad_status = q.enqueue(jobs.add, 1, 3)
    sync_redis.hset(f"rq:job:{bad_status.id}", "status", "exploded")
    after = q.enqueue(jobs.add, 20, 22)

    proc = launcher.burst(asyncjobs_kind, ["default"])
    assert fetch(sync_redis, after.id).return_value() == 42, proc.output()
    assert q.count == 0
    assert sync_redis.llen("rq:queue:default:intermediate") == 0
    assert sync_redis.zcard("rq:wip:default") == 0
    failed = set(sync_redis.zrange("rq:failed:default", 0, -1))
    for jid in (bad_date.id, bad_cb.id, bad_status.id):
        assert jid.encode() in failed, (jid, failed, proc.output())
        assert sync_redis.hget(f"rq:job:{jid}", "status") == b"failed", jid
        text = _failed_with(sync_redis, jid)
        assert len(text.strip()) > 10, text
    # a readable reason naming the bad field/value
    assert "created_at" in _failed_with(sync_redis, bad_date.id) or "2026-01-01 00:00:00" in _failed_with(
        sync_redis, bad_date.id
    )
    assert "success_callback_timeout" in _failed_with(sync_redis, bad_cb.id)
    assert "exploded" in _failed_with(sync_redis, bad_status.id)


def test_stock_worker_quits_on_malformed_hash(
    stock_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """Reference behaviour the asyncjobs test above improves upon (documents the quirk)."""
    q = Queue("default", connection=sync_redis)
    bad = q.enqueue(jobs.add, 1, 1)
    sync_redis.hset(f"rq:job:{bad.id}", "created_at", "2026-01-01 00:00:00+00:00")
    after = q.enqueue(jobs.add, 2, 2)
    launcher.burst(stock_kind, ["default"], expect_rc=None)
    assert Job(after.id, connection=sync_redis).get_status() == "queued"
    assert sync_redis.lrange("rq:queue:default:intermediate", 0, -1) == [bad.id.encode()]


def test_a_malformed_job_abandoned_by_a_crash_does_not_break_rqs_maintenance(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis, redis_url: str
) -> None:
    """A malformed job claimed by a worker that dies before recording its failure stays in rq:wip.
    RQ's abandoned-job cleanup (every worker's maintenance, every ``rq info``) cannot load it and
    raised at every pass; the next asyncjobs worker repairs it so RQ's own cleanup fails it."""
    import subprocess
    import time
    from urllib.parse import urlparse

    from rq.registry import StartedJobRegistry

    from tests.testsupport.faultproxy import FaultProxy
    from tests.testsupport.workers import rq_command, run_asyncjobs_worker, wait_for

    parsed = urlparse(redis_url)
    proxy = FaultProxy(parsed.hostname or "127.0.0.1", parsed.port or 6379).start()
    with proxy, run_asyncjobs_worker(proxy.url(), "default", "--job-monitoring-interval", "1") as worker:
        wait_for(lambda: sync_redis.keys("rq:worker:*"), 30, message=worker.output)
        proxy.delay_next_reply(b"rq:asyncjobs:claim:", 60)  # the claim runs; its reply never arrives
        with sync_redis.pipeline() as pipe:  # the worker only ever sees the malformed hash
            job = Queue("default", connection=sync_redis).enqueue(jobs.add, 1, 2, pipeline=pipe)
            pipe.hset(job.key, "created_at", "yesterday")
            pipe.execute()
        wait_for(lambda: sync_redis.zcard("rq:wip:default"), 30, message=worker.output)
        worker.kill()
    # Its heartbeat deadline passes (as the clock would move it).
    sync_redis.zadd("rq:wip:default", {m: 0 for m in sync_redis.zrange("rq:wip:default", 0, -1)}, xx=True)
    # The next asyncjobs worker on the queue repairs what RQ cannot load ...
    proc = launcher.start(asyncjobs_kind, ["default"], "--job-monitoring-interval", "1")
    wait_for(lambda: sync_redis.hget(job.key, "created_at") != b"yesterday", 30, message=proc.output)
    proc.stop()
    assert proc.wait(30) == 0, proc.output()
    # ... so RQ's own tools work again and fail the job as abandoned.
    info = subprocess.run([*rq_command(), "info", "-u", redis_url], capture_output=True, text=True, check=False)
    assert info.returncode == 0, info.stderr
    StartedJobRegistry("default", connection=sync_redis).cleanup(timestamp=time.time() + 3600)
    assert fetch(sync_redis, job.id).get_status() == "failed"
    assert sync_redis.zcard("rq:wip:default") == 0
    _failed_with(sync_redis, job.id, "AbandonedJobError")
