"""Issue 21 §3: bounded retention.  ``--failure-ttl`` is the worker's default ``failure_ttl`` (RQ's own
semantics: the failed job's hash, its results and its FailedJobRegistry entry expire after it); a
job's own ``failure_ttl`` wins; without the flag RQ's default (one year) holds."""

from __future__ import annotations

import time

import redis
from rq import Queue
from rq.job import Job

from asyncjobs.protocol.keys import DEFAULT
from tests.worker import jobs
from tests.worker.conftest import eventually

YEAR = 31536000


async def test_failure_ttl_default_applies_where_the_job_sets_none(start_worker, redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    try:
        q = Queue("default", connection=conn)
        plain = q.enqueue(jobs.ledger_incr_and_fail, redis_url, "runs")
        own = q.enqueue(jobs.ledger_incr_and_fail, redis_url, "runs", failure_ttl=5000)
        await start_worker(default_failure_ttl=100)
        await eventually(lambda: all(Job.fetch(j.id, connection=conn).get_status() == "failed" for j in (plain, own)),
                         what="both jobs failed")
        now = time.time()
        for job, ttl in ((plain, 100), (own, 5000)):
            assert ttl - 10 < conn.ttl(DEFAULT.job(job.id)) <= ttl
            assert ttl - 10 < conn.ttl(DEFAULT.results(job.id)) <= ttl
            score = conn.zscore(DEFAULT.failed("default"), job.id)
            assert score is not None and ttl - 10 < score - now <= ttl
    finally:
        conn.close()


async def test_without_the_flag_failed_jobs_keep_rqs_one_year(start_worker, redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    try:
        job = Queue("default", connection=conn).enqueue(jobs.ledger_incr_and_fail, redis_url, "runs")
        await start_worker()
        await eventually(lambda: Job.fetch(job.id, connection=conn).get_status() == "failed", what="failed")
        assert YEAR - 60 < conn.ttl(DEFAULT.job(job.id)) <= YEAR
    finally:
        conn.close()


async def test_info_shows_sampled_memory_per_registry(start_worker, redis_url: str) -> None:
    from asyncjobs.cli.info import MEMORY_SAMPLE, collect, format_snapshot

    conn = redis.Redis.from_url(redis_url)
    try:
        q = Queue("default", connection=conn)
        failing = [q.enqueue(jobs.ledger_incr_and_fail, redis_url, "runs") for _ in range(12)]
        await start_worker(default_failure_ttl=100)
        await eventually(lambda: all(Job.fetch(j.id, connection=conn).get_status() == "failed" for j in failing),
                         what="12 failed")
        for _ in range(5):
            q.enqueue(jobs.add, 1, 2, result_ttl=60, at_front=False)
        await eventually(lambda: conn.zcard(DEFAULT.finished("default")) == 5, what="5 finished")
        snap = collect(conn, ["default"])
        mem = {m.registry: m for m in snap.memory}
        assert mem["failed"].jobs == 12 and mem["failed"].sampled == MEMORY_SAMPLE
        assert mem["finished"].jobs == 5 and mem["finished"].sampled == MEMORY_SAMPLE
        # Each failed job keeps a hash and a results stream with a traceback: more than the finished ones.
        assert mem["failed"].bytes / 12 > mem["finished"].bytes / 5 > 0
        assert mem["queued"].jobs == 0 and mem["queued"].sampled == 0
        text = format_snapshot(snap)
        assert "Memory by registry" in text and "failed         12 jobs  ~" in text, text
    finally:
        conn.close()
