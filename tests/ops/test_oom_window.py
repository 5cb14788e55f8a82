"""Issue 18 item 10, measured as the issue measured it: a real worker under load, Redis refusing writes
(``maxmemory`` with ``noeviction``) for 30 s, a ledger of side effects outside Redis.  Before the fix a
5 s window left 30 of 30 completed jobs failed as abandoned, and a 10 s one lost 42 results (22 failed,
20 ran twice).  Here every job must run exactly once and end ``finished`` with its result."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from tests.testsupport.workers import run_asyncjobs_worker, wait_for

OOM_SECONDS = 30.0
JOBS = 200


def _finished(conn: redis.Redis, ids: list[str]) -> int:
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        return sum(1 for s in pipe.execute() if s == b"finished")


def test_a_30_s_oom_window_loses_no_result_and_runs_nothing_twice(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    q = Queue("oomq", connection=sync_redis)
    jobs = [q.enqueue("tests.ops.jobs.ledger", str(ledger), f"t{i}", 0.2) for i in range(JOBS)]
    ids = [j.id for j in jobs]
    with run_asyncjobs_worker(redis_url, "oomq", "--concurrency", "20") as worker:
        wait_for(lambda: _finished(sync_redis, ids) >= 40, 60, message=worker.output)
        sync_redis.config_set("maxmemory-policy", "noeviction")
        sync_redis.config_set("maxmemory", "1")
        try:
            t0 = time.monotonic()
            refused_at = _finished(sync_redis, ids)
            while time.monotonic() - t0 < OOM_SECONDS:
                assert worker.is_running(), worker.output()
                time.sleep(1.0)
            assert _finished(sync_redis, ids) == refused_at  # no write went through: nothing stored or claimed
        finally:
            sync_redis.config_set("maxmemory", "0")
        wait_for(lambda: _finished(sync_redis, ids) == JOBS, 90, message=worker.output)
        worker.stop()
        assert worker.wait(60) == 0, worker.output()
    ran = ledger.read_text().split()
    assert sorted(ran) == sorted(f"t{i}" for i in range(JOBS))  # each side effect exactly once
    assert FailedJobRegistry(queue=q).get_job_ids() == []
    assert all(Job.fetch(j, connection=sync_redis).return_value() == f"t{i}" for i, j in enumerate(ids))
