"""Issue 22, metrics that see everything: every queue's job counters exist at 0 from a worker's start
(so ``rate()`` and ``increase()`` see its first failures), and ``asyncjobs-worker exporter`` serves
queue sizes, the oldest job's age and the live workers from Redis with no worker running, so the
backlog and no-worker alerts can fire while the whole fleet is down."""

from __future__ import annotations

import pytest
import redis
from rq import Queue
from rq.worker import Worker as RQWorker

from tests.ops.test_metrics import scrape, value
from tests.testsupport.redis_server import free_port
from tests.testsupport.workers import WorkerProcess, asyncjobs_worker_command, run_asyncjobs_worker, wait_for

pytest.importorskip("prometheus_client")

STATUSES = ("finished", "failed", "stopped", "retried", "requeued")


def test_job_counters_exist_at_zero_for_every_queue_from_the_start(redis_url: str) -> None:
    port = free_port()
    with run_asyncjobs_worker(redis_url, ["zq-a", "zq-b"], "--metrics-port", str(port),
                              "--metrics-host", "127.0.0.1") as worker:
        wait_for(lambda: " started: " in worker.output(), 30, message=worker.output)
        samples = wait_for(lambda: scrape(port), 30, message="a scrape")
        for queue in ("zq-a", "zq-b"):
            for status in STATUSES:
                assert value(samples, "asyncjobs_jobs_total", queue=queue, status=status) == 0, (queue, status)
        worker.stop()
        assert worker.wait(30) == 0, worker.output()


def test_exporter_serves_the_backlog_with_no_worker(redis_url: str, sync_redis: redis.Redis) -> None:
    queue = Queue("nobody-home", connection=sync_redis)
    for i in range(3):
        queue.enqueue("operator.add", i, 1)
    port = free_port()
    argv = [*asyncjobs_worker_command(), "exporter", "-u", redis_url, "--port", str(port), "--host", "127.0.0.1",
            "--interval", "1", "--rq-exporter-names"]
    with WorkerProcess(argv) as exporter:
        def sampled() -> dict[str, float | None] | None:
            try:
                s = scrape(port)
            except AssertionError:
                return None
            got = {"queued": value(s, "asyncjobs_queue_jobs", queue="nobody-home", state="queued"),
                   "oldest": value(s, "asyncjobs_queue_oldest_job_age_seconds", queue="nobody-home"),
                   "workers": value(s, "asyncjobs_workers_live")}
            return got if got["queued"] is not None else None

        got = wait_for(sampled, 30, message=lambda: exporter.output())
        assert got["queued"] == 3 and got["oldest"] is not None and got["oldest"] >= 0
        assert got["workers"] == 0  # the no-worker alert fires on this
        # rq-exporter's names too, for dashboards built on them.
        s = scrape(port)
        assert value(s, "rq_jobs", queue="nobody-home", status="queued") == 3
        assert value(s, "rq_jobs", queue="nobody-home", status="finished") == 0
        assert not [k for k in s if k[0] == "rq_workers"]
        # A stock worker comes up: both views see it.
        stock = RQWorker([queue], connection=sync_redis, name="stock-1")
        stock.register_birth()
        stock.set_state("idle")

        def seen() -> bool:
            s = scrape(port)
            return (value(s, "asyncjobs_workers_live") == 1
                    and s.get(("rq_workers", (("name", "stock-1"), ("queues", "nobody-home"), ("state", "idle")))) == 1)

        wait_for(seen, 30, message=lambda: f"the stock worker in {scrape(port)}")
        stock.register_death()
        exporter.stop()
        assert exporter.wait(30) == 0, exporter.output()
    assert not sync_redis.exists("asyncjobs:metrics:sampler:nobody-home"), "the sampler lock is released"
