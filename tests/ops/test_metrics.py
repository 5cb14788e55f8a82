"""Prometheus metrics (issue 11 §1) against real worker processes, stock RQ and prometheus_client's parser.

* ``--processes 2 --concurrency 5 --metrics-port``: one scrape of the supervisor shows both
  children (multiprocess mode): 20 good and 3 failing jobs enqueued with stock RQ end as
  finished 20, failed 3, duration count 23, in flight 0, and the sampled queue sizes equal
  RQ's own counts; the supervisor's health port answers for its children; the multiprocess
  directory is removed at exit.
* ``rq worker -w asyncjobs.AsyncWorker`` with ``ASYNCJOBS_METRICS_PORT``; delivery counts from
  ``send_email`` against a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker import Worker as RQWorker

from tests.ops import jobs
from tests.ops.test_deploy_files import METRICS
from tests.testsupport.redis_server import free_port
from tests.testsupport.smtp_server import SmtpTestServer
from tests.testsupport.workers import (
    WorkerProcess,
    run_asyncjobs_worker,
    run_rq_worker_with_asyncjobs_class,
    wait_for,
)

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(port: int) -> Samples:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def worker_box() -> Iterator[list[WorkerProcess]]:
    box: list[WorkerProcess] = []
    yield box
    for w in box:
        w.close()


def test_processes_2_one_scrape_shows_every_child(
    redis_url: str, sync_redis: redis.Redis, worker_box: list[WorkerProcess]
) -> None:
    mport, hport = free_port(), free_port()
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    queue = Queue("mq", connection=sync_redis)
    worker = run_asyncjobs_worker(
        redis_url, "mq", "--processes", "2", "--concurrency", "5", "--name", name,
        "--metrics-port", str(mport), "--health-port", str(hport),
    )
    worker_box.append(worker)
    wait_for(lambda: len(RQWorker.all(connection=sync_redis)) == 2, 30, message=lambda: worker.output())
    # The supervisor's health port answers for both children (they are registered: ready).
    wait_for(lambda: get(f"http://127.0.0.1:{hport}/readyz")[0] == 200, 30,
             message=lambda: f"/readyz 200: {get(f'http://127.0.0.1:{hport}/readyz')}")
    assert get(f"http://127.0.0.1:{hport}/livez") == (200, "ok\n")

    for i in range(20):
        queue.enqueue(jobs.ok, i)
    for i in range(3):
        queue.enqueue(jobs.fail, i)

    def ended() -> Samples | None:
        s = scrape(mport)
        done = (value(s, "asyncjobs_jobs_total", queue="mq", status="finished") == 20
                and value(s, "asyncjobs_jobs_total", queue="mq", status="failed") == 3
                and value(s, "asyncjobs_jobs_in_flight") == 0)
        return s if done else None

    s = wait_for(ended, 60, message=lambda: f"20 finished, 3 failed in {scrape(mport)}\n{worker.output()}")
    assert value(s, "asyncjobs_job_duration_seconds_count", queue="mq") == 23
    assert value(s, "asyncjobs_job_start_delay_seconds_count", queue="mq") == 23
    assert value(s, "asyncjobs_concurrency_limit") == 10  # 2 processes x 5
    assert value(s, "asyncjobs_redis_errors_total") == 0
    for status in ("stopped", "retried", "requeued"):
        assert value(s, "asyncjobs_jobs_total", queue="mq", status=status) in (None, 0)
    lag = value(s, "asyncjobs_event_loop_lag_seconds")
    assert lag is not None and lag >= 0

    # Queue sizes: sampled by one process (every 10 s), equal to RQ's own counts.
    def rq_counts() -> dict[str, float]:
        return {
            "queued": queue.count,
            "started": StartedJobRegistry(queue=queue).count,
            "failed": FailedJobRegistry(queue=queue).count,
            "scheduled": ScheduledJobRegistry(queue=queue).count,
            "deferred": DeferredJobRegistry(queue=queue).count,
        }

    def sampled() -> dict[str, float | None]:
        s = scrape(mport)
        return {state: value(s, "asyncjobs_queue_jobs", queue="mq", state=state) for state in rq_counts()}

    expected = rq_counts()
    assert expected == {"queued": 0, "started": 0, "failed": 3, "scheduled": 0, "deferred": 0}
    wait_for(lambda: sampled() == expected, 40, message=lambda: f"{sampled()} == {expected}")
    wait_for(lambda: value(scrape(mport), "asyncjobs_workers_live") == 2, 40, message="2 live workers")
    # Every name the shipped alerts and dashboard use is exported (delivery only by email/SMS jobs).
    exported = {re.sub(r"_(bucket|sum|count)$", "", n) for n, _ in scrape(mport)}
    assert METRICS - {"asyncjobs_delivery_total"} <= exported, sorted(METRICS - exported)
    # One sampler for the queue across the deployment: the lock is held by this supervisor.
    assert sync_redis.exists("asyncjobs:metrics:sampler:mq")

    worker.stop()
    assert worker.wait(60) == 0, worker.output()
    m = re.search(r"aggregated through (\S+)", worker.output())
    assert m, worker.output()
    assert not os.path.exists(m[1]), "the supervisor removes its PROMETHEUS_MULTIPROC_DIR"
    assert not sync_redis.exists("asyncjobs:metrics:sampler:mq"), "the sampler lock is released at exit"


def test_rq_worker_with_asyncjobs_class_serves_metrics_from_env(
    redis_url: str, sync_redis: redis.Redis, worker_box: list[WorkerProcess]
) -> None:
    port = free_port()
    worker = run_rq_worker_with_asyncjobs_class(
        redis_url, "mq", env={"ASYNCJOBS_METRICS_PORT": str(port), "ASYNCJOBS_METRICS_HOST": "127.0.0.1"}
    )
    worker_box.append(worker)
    queue = Queue("mq", connection=sync_redis)
    job = queue.enqueue(jobs.ok, 7)
    wait_for(lambda: job.get_status(refresh=True) == "finished", 30, message=lambda: worker.output())
    wait_for(lambda: value(scrape(port), "asyncjobs_jobs_total", queue="mq", status="finished") == 1, 30,
             message=lambda: worker.output())
    s = scrape(port)
    assert value(s, "asyncjobs_concurrency_limit") == 10
    assert value(s, "asyncjobs_jobs_in_flight") == 0
    assert any(name.startswith("process_") for name, _ in s), "the default registry's process metrics too"


def test_delivery_counts_from_send_email(
    redis_url: str, sync_redis: redis.Redis, worker_box: list[WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("aiosmtplib")
    for key in list(os.environ):
        if key.upper().startswith(("SMTP_", "SMS_", "EMAIL_", "RATE_LIMIT", "DELIVERY_")):
            monkeypatch.delenv(key)
    port = free_port()
    with SmtpTestServer() as smtp:
        env = {
            "EMAIL_BACKEND": "smtp", "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_TLS": "none",
            "SMTP_FROM_EMAIL": "noreply@example.com", "DELIVERY_MAX_ATTEMPTS": "1",
        }
        worker = run_asyncjobs_worker(redis_url, "emails", "--metrics-port", str(port), env=env)
        worker_box.append(worker)
        queue = Queue("emails", connection=sync_redis)
        sent = [queue.enqueue("asyncjobs.tasks.send_email", f"user{i}@example.com", "Hi", "Body") for i in range(2)]
        bad = queue.enqueue("asyncjobs.tasks.send_email", "not-an-address", "Hi", "Body")
        wait_for(lambda: all(j.get_status(refresh=True) == "finished" for j in sent)
                 and bad.get_status(refresh=True) == "failed", 30, message=lambda: worker.output())
        assert len(smtp.messages) == 2
        s = scrape(port)
        assert value(s, "asyncjobs_delivery_total", channel="email", result="sent") == 2
        assert value(s, "asyncjobs_delivery_total", channel="email", result="rejected") == 1
        assert value(s, "asyncjobs_jobs_total", queue="emails", status="failed") == 1
