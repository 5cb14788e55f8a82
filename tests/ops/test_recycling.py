"""Issue 21 §2: worker recycling (--max-jobs, --max-memory) against real worker processes.

A recycled worker stops claiming, finishes its jobs in flight and exits; under ``--processes`` the
supervisor starts a fresh child at once, so the pool keeps its size; alone, ``--max-memory`` exits
with status 75 for the process manager to restart.  Each job appends its token to a ledger file, so
a job lost or run twice shows up whatever Redis says.
"""

from __future__ import annotations

from pathlib import Path

import redis
from rq import Queue
from rq.job import Job
from rq.worker import Worker

from asyncjobs.worker.recycle import RECYCLE_EXIT
from tests.ops import jobs
from tests.ops.test_metrics import scrape, value
from tests.testsupport.redis_server import free_port
from tests.testsupport.workers import run_asyncjobs_worker, wait_for


def _ledger(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _children(conn: redis.Redis, name: str) -> dict[str, int]:
    return {w.name: w.pid for w in Worker.all(connection=conn) if w.name.startswith(name)}


def test_pool_replaces_children_that_reach_max_jobs(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    """--processes 2 --max-jobs 4: each child exits after 4 jobs and is replaced (before: the pool shrank
    to nothing after 8 jobs); 24 jobs all run exactly once and the pool still has 2 children."""
    ledger = tmp_path / "ledger"
    q = Queue("recycle", connection=sync_redis)
    ids = [q.enqueue(jobs.sync_ledger, str(ledger), f"t{i}").id for i in range(24)]
    port = free_port()
    with run_asyncjobs_worker(redis_url, "recycle", "--name", "rc", "--processes", "2", "--max-jobs", "4",
                              "--concurrency", "2", "--metrics-port", str(port)) as proc:
        wait_for(lambda: len(_ledger(ledger)) >= 24, 90, message=lambda: f"24 jobs run\n{proc.output()}")
        wait_for(lambda: all(Job.fetch(i, connection=sync_redis).get_status() == "finished" for i in ids), 20,
                 message="24 jobs finished")
        assert sorted(_ledger(ledger)) == sorted(f"t{i}" for i in range(24))
        recycled = proc.output().count("recycled itself")
        assert recycled >= 4, proc.output()
        # The supervisor's /metrics counts them (the children's counters outlive the children).
        assert (value(scrape(port), "asyncjobs_worker_recycles_total", reason="max_jobs") or 0) >= recycled
        wait_for(lambda: set(_children(sync_redis, "rc")) == {"rc-0", "rc-1"}, 30,
                 message=lambda: f"2 children again\n{proc.output()}")
        proc.stop()
        assert proc.wait(60) == 0, proc.output()
    assert _children(sync_redis, "rc") == {}


def test_max_memory_recycles_a_leaking_pool_without_losing_jobs(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """Jobs that leak 4 MB each, 60 of them (240 MB if nothing recycled): every child recycles when its
    RSS passes 100 MB (a few times each: few, as each recycle starts a process, slow on a loaded CI
    machine), every job runs exactly once, and no job ever saw the RSS far past the limit (the jobs in
    flight at the check may each add their 4 MB)."""
    ledger = tmp_path / "ledger"
    limit = 100 << 20
    q = Queue("leaky", connection=sync_redis)
    ids = [q.enqueue(jobs.leak, str(ledger), f"t{i}", 4).id for i in range(60)]
    with run_asyncjobs_worker(redis_url, "leaky", "--name", "lk", "--processes", "2", "--max-memory", "100",
                              "--concurrency", "2") as proc:
        wait_for(lambda: len(_ledger(ledger)) >= 60, 90, message=lambda: f"60 jobs run\n{proc.output()}")
        wait_for(lambda: all(Job.fetch(i, connection=sync_redis).get_status() == "finished" for i in ids), 20,
                 message="60 jobs finished")
        assert sorted(_ledger(ledger)) == sorted(f"t{i}" for i in range(60))
        rss = [Job.fetch(i, connection=sync_redis).return_value() for i in ids]
        assert max(rss) <= limit + 3 * (4 << 20), max(rss)
        assert proc.output().count("recycled itself") >= 2, proc.output()
        assert "over --max-memory" in proc.output()
        wait_for(lambda: set(_children(sync_redis, "lk")) == {"lk-0", "lk-1"}, 30,
                 message=lambda: f"2 children again\n{proc.output()}")
        proc.stop()
        assert proc.wait(60) == 0, proc.output()


def test_max_memory_alone_drains_and_exits_with_the_recycle_status(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """A single worker over --max-memory finishes what it started and exits 75 (EX_TEMPFAIL), for
    systemd's Restart=on-failure or Kubernetes to restart; the jobs it did not take stay queued."""
    ledger = tmp_path / "ledger"
    q = Queue("leaky1", connection=sync_redis)
    ids = [q.enqueue(jobs.leak, str(ledger), f"t{i}", 8).id for i in range(60)]
    with run_asyncjobs_worker(redis_url, "leaky1", "--max-memory", "80", "--concurrency", "2") as proc:
        assert proc.wait(60) == RECYCLE_EXIT == 75, proc.output()
    ran = _ledger(ledger)
    assert 0 < len(ran) < 60
    statuses = [Job.fetch(i, connection=sync_redis).get_status() for i in ids]
    assert statuses.count("finished") == len(ran) and statuses.count("queued") == 60 - len(ran)
    assert Worker.all(connection=sync_redis) == []
