"""Redis Sentinel with real processes on loopback: a master, a replica and three sentinels.

* ``asyncjobs-worker --sentinel ... --sentinel-master`` under load follows a
  ``SENTINEL FAILOVER`` to the new master: every enqueued job (before and after
  the failover) ends ``finished`` exactly once, counted in a ledger file outside
  Redis, and the worker process never restarts;
* ``rq worker -w asyncjobs.AsyncWorker -c settings`` and ``asyncjobs-worker -c
  settings`` with stock RQ's ``SENTINEL`` dict connect where RQ would (the master
  Sentinel names), not to ``localhost``.
"""

from __future__ import annotations

import collections
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel
from rq import Queue
from rq.worker import Worker as RQWorker

from tests.ops import jobs
from tests.testsupport.sentinel import MASTER_NAME, SentinelCluster
from tests.testsupport.workers import (
    WorkerProcess,
    asyncjobs_worker_command,
    rq_command,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as c:
        yield c


@pytest.fixture
def producer(cluster: SentinelCluster) -> Iterator[redis.Redis]:
    conn = Sentinel(cluster.sentinels, socket_timeout=5).master_for(MASTER_NAME, socket_timeout=5)
    conn.flushdb()
    try:
        yield conn
    finally:
        conn.close()


def _ledger(path: Path) -> collections.Counter[str]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(path.read_text().split())


def _enqueue(q: Queue, ledger: Path, prefix: str, n: int, seconds: float) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    q.enqueue_many(
        [Queue.prepare_data(jobs.ledger, (str(ledger), jid, seconds), job_id=jid, result_ttl=3600) for jid in ids]
    )
    return ids


def _statuses(conn: redis.Redis, ids: list[str]) -> collections.Counter[str]:
    pipe = conn.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(f"rq:job:{jid}", "status")
    return collections.Counter((s or b"missing").decode() for s in pipe.execute())


def test_worker_follows_sentinel_failover_without_losing_or_repeating_a_job(
    cluster: SentinelCluster, producer: redis.Redis, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    q = Queue("failover", connection=producer)
    before = _enqueue(q, ledger, "a", 300, 0.05)
    name = "sentinel-follower"
    argv = [*asyncjobs_worker_command(), "--sentinel", cluster.sentinel_arg, "--sentinel-master", MASTER_NAME,
            "--concurrency", "8", "--name", name, "failover"]
    with WorkerProcess(argv) as worker:
        # Under load: the worker is part-way through the first batch when the master changes.
        wait_for(lambda: sum(_ledger(ledger).values()) >= 40, 60,
                 message=lambda: f"the worker to run 40 jobs; output:\n{worker.output()}")
        old, new = cluster.switchover()
        done_at_failover = sum(_ledger(ledger).values())
        assert done_at_failover < len(before), "the failover must happen while jobs are still queued"
        assert worker.is_running(), worker.output()
        after = _enqueue(q, ledger, "b", 100, 0.01)  # enqueued on the new master
        everything = before + after
        with redis.Redis(port=new) as new_master:
            wait_for(lambda: _statuses(new_master, everything)["finished"] == len(everything), 120,
                     message=lambda: f"all jobs finished on the new master ({_statuses(new_master, everything)}, "
                     f"ledger {sum(_ledger(ledger).values())}); output:\n{worker.output()}")
            counts = _ledger(ledger)
            assert set(counts) == set(everything), (
                f"missing from the ledger: {sorted(set(everything) - set(counts))[:10]}"
            )
            repeated = {k: v for k, v in counts.items() if v != 1}
            assert not repeated, f"jobs ran more than once: {repeated}"
            # Nothing stranded, failed or left over in RQ's own view of the new master.
            nq = Queue("failover", connection=new_master)
            assert nq.count == 0
            assert nq.failed_job_registry.count == 0
            assert nq.started_job_registry.count == 0
            assert nq.finished_job_registry.count == len(everything)
            workers = {w.name: w for w in RQWorker.all(connection=new_master)}
            assert name in workers, f"worker not registered on the new master: {sorted(workers)}"
            assert workers[name].successful_job_count == len(everything)
        assert worker.is_running(), "the worker process must follow the failover, not restart"
        worker.stop()
        assert worker.wait(60) == 0, worker.output()
    assert old != new


def _settings_module(tmp_path: Path, cluster: SentinelCluster, queue: str) -> str:
    mod = tmp_path / "sentinel_rq_settings.py"
    mod.write_text(textwrap.dedent(f"""
        SENTINEL = {{
            "INSTANCES": {cluster.sentinels!r},
            "MASTER_NAME": {MASTER_NAME!r},
            "DB": 0,
            "SOCKET_TIMEOUT": 5,
        }}
        QUEUES = [{queue!r}]
    """))
    return mod.stem


@pytest.mark.parametrize("cli", ["rq-worker-class", "asyncjobs-worker"])
def test_rq_sentinel_settings_are_used_as_given(
    cluster: SentinelCluster, producer: redis.Redis, tmp_path: Path, cli: str
) -> None:
    module = _settings_module(tmp_path, cluster, "via-settings")
    ledger = tmp_path / "ledger"
    ids = _enqueue(Queue("via-settings", connection=producer), ledger, "s", 5, 0.0)
    name = f"settings-{cli}"
    if cli == "rq-worker-class":
        argv = [*rq_command(), "worker", "-w", "asyncjobs.AsyncWorker", "-c", module, "--burst", "-n", name]
    else:
        argv = [*asyncjobs_worker_command(), "-c", module, "--burst", "-n", name]
    # QUEUES comes from the settings module too (no queue on the command line).
    env = {"PYTHONPATH": f"{tmp_path}:{Path.cwd()}", "REDIS_URL": "redis://127.0.0.1:1/0"}
    with WorkerProcess(argv, env=env) as worker:
        rc = worker.wait(60)
        assert rc == 0, worker.output()
        assert _statuses(producer, ids) == {"finished": len(ids)}, worker.output()
    assert sorted(_ledger(ledger)) == sorted(ids)
