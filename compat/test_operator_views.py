"""Issue 11 §5: what RQ's tools and ``asyncjobs-worker info``/``check`` show of a busy asyncjobs worker.

One asyncjobs worker (``--concurrency 5``) holds 5 jobs in flight while 3 more
wait, one has failed, one is scheduled and one is deferred; a stock SimpleWorker
on another queue holds one job.  Then:

* stock ``Worker.all()``, ``rq info`` and rq-dashboard's JSON endpoints still read
  both workers, and the asyncjobs one says what it is (``version``, name);
* ``asyncjobs-worker info`` lists every job in flight of each worker (5 and 1),
  with function and age, and per-queue counts equal to RQ's own registries;
* ``asyncjobs-worker check`` passes for the live worker by name and by queue set,
  and fails with a reason for an unknown name or once the worker has exited.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import rq
from rq import Queue
from rq.worker import Worker

from compat import jobs
from compat.support import RQ_MAJOR, Launcher, WorkerKind, release, wait_held, wait_status
from tests.testsupport.workers import PROJECT_ROOT, asyncjobs_worker_command, run_rq_cli

AJ = "ops-aj"
STOCK_NAME = "ops-stock"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*asyncjobs_worker_command(), *args], cwd=str(PROJECT_ROOT), capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def busy(
    launcher: Launcher, asyncjobs_kind: WorkerKind, stock_kind: WorkerKind, sync_redis: redis.Redis
) -> Iterator[dict[str, Any]]:
    url = launcher.url
    q = Queue("views", connection=sync_redis)
    failed = q.enqueue(jobs.boom, "for the failed count")
    launcher.burst(asyncjobs_kind, "views")
    wait_status(sync_redis, failed.id, "failed")
    held = [q.enqueue(jobs.async_hold, url, f"h{i}", job_id=f"held-{i}") for i in range(5)]
    waiting = [q.enqueue(jobs.add, i, i, job_id=f"waiting-{i}") for i in range(3)]
    q.enqueue_in(timedelta(hours=1), jobs.add, 1, 1, job_id="later")
    deferred = q.enqueue(jobs.add, 2, 2, job_id="after-held", depends_on=held[0])
    sq = Queue("views-stock", connection=sync_redis)
    stock_job = sq.enqueue(jobs.hold, url, "s0", job_id="stock-held")
    aj = launcher.start(asyncjobs_kind, "views", "--name", AJ, concurrency=5)
    stock = launcher.start(stock_kind, "views-stock", "--name", STOCK_NAME)
    wait_held(sync_redis, 6, proc=aj)
    # The stock job's `started` status is written with what each RQ major's readers use to name a
    # worker's job (2.12: `current_job`; 3.0: the worker's executions set, written just before).
    wait_status(sync_redis, "stock-held", "started", proc=stock)
    try:
        yield {"q": q, "aj": aj, "stock": stock, "held": held, "waiting": waiting, "deferred": deferred,
               "stock_job": stock_job, "failed": failed}
    finally:
        release(sync_redis, *[f"h{i}" for i in range(5)], "s0")


def test_stock_readers_see_the_asyncjobs_worker(busy: dict[str, Any], sync_redis: redis.Redis) -> None:
    workers = {w.name: w for w in Worker.all(connection=sync_redis)}
    assert {AJ, STOCK_NAME} <= set(workers)
    aj = workers[AJ]
    assert "asyncjobs" in aj.version and aj.version.startswith(f"{rq.__version__}+")
    assert "asyncjobs" not in workers[STOCK_NAME].version
    assert aj.get_state() == "busy" and [q.name for q in aj.queues] == ["views"]
    current = aj.get_current_job()
    assert current is not None and current.id in {j.id for j in busy["held"]}
    if RQ_MAJOR >= 3:
        # RQ 3 lists a worker's executions: all 5 of the asyncjobs worker, the stock one's 1.
        executions = aj.get_current_executions()
        assert sorted(e.job_id for e in executions) == sorted(j.id for j in busy["held"])
        assert aj.current_execution_count == 5
        assert all(e.worker_name == AJ for e in executions)
        assert [e.job_id for e in workers[STOCK_NAME].get_current_executions()] == ["stock-held"]

    out = run_rq_cli("info", "-u", busy["aj"].argv[busy["aj"].argv.index("-u") + 1], "views", "views-stock")
    assert out.returncode == 0, out.stderr
    assert f"{AJ} (" in out.stdout and f"{STOCK_NAME} (" in out.stdout
    assert "5 executing" in out.stdout  # rq info's "executing" is the StartedJobRegistry: all 5


def test_rq_dashboard_json_endpoints(busy: dict[str, Any], redis_url: str) -> None:
    pytest.importorskip("rq_dashboard", reason="rq-dashboard is in the test extra: pip install -e '.[test]'")
    from rq_dashboard.cli import make_flask_app
    from rq_dashboard.web import setup_rq_connection

    app = make_flask_app(None, None, None, "")
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    with app.app_context():
        setup_rq_connection(app)
    client = app.test_client()
    workers = client.get("/0/data/workers.json")
    assert workers.status_code == 200
    by_name = {w["name"]: w for w in workers.get_json()["workers"]}
    assert "asyncjobs" in by_name[AJ]["version"] and by_name[AJ]["state"] == "busy"
    assert by_name[AJ]["current_job"]["job_id"] in {j.id for j in busy["held"]}
    assert by_name[STOCK_NAME]["current_job"]["job_id"] == "stock-held"
    queues = {q["name"]: q for q in client.get("/0/data/queues.json").get_json()["queues"]}
    assert queues["views"]["count"] == 3
    started = client.get("/0/data/jobs/views/started/20/asc/1.json").get_json()
    assert sorted(j["id"] for j in started["jobs"]) == sorted(j.id for j in busy["held"])
    job = client.get(f"/0/data/job/{busy['held'][1].id}.json")
    assert job.status_code == 200 and job.get_json()["status"] == "started"
    deferred = client.get("/0/data/jobs/views/deferred/20/asc/1.json").get_json()
    assert [j["id"] for j in deferred["jobs"]] == [busy["deferred"].id]
    # rq-dashboard 0.9's own bug, documented in the README with its workaround: the detail of a job
    # with depends_on answers 500 (it calls .decode() on RQ 2's str dependency ids). If this starts
    # passing, rq-dashboard fixed it: update the README.
    app.testing = False
    assert client.get(f"/0/data/job/{busy['deferred'].id}.json").status_code == 500


def test_info_lists_jobs_in_flight_and_queue_counts(busy: dict[str, Any], redis_url: str,
                                                    sync_redis: redis.Redis) -> None:
    res = _cli("info", "-u", redis_url, "--json")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    workers = {w["name"]: w for w in snap["workers"]}
    aj, stock = workers[AJ], workers[STOCK_NAME]
    assert aj["kind"] == "asyncjobs" and stock["kind"] == "rq" and stock["concurrency"] == 1
    assert sorted(j["job_id"] for j in aj["jobs"]) == sorted(j.id for j in busy["held"])
    assert {j["func"] for j in aj["jobs"]} == {"compat.jobs.async_hold"}
    assert all(j["running_s"] is not None and 0 <= j["running_s"] < 120 for j in aj["jobs"])
    assert [j["job_id"] for j in stock["jobs"]] == ["stock-held"]
    assert aj["pid"] == busy["aj"].pid and aj["queues"] == ["views"] and aj["heartbeat_age_s"] < 60
    assert aj["failed"] >= 0 and stock["successful"] == 0
    q = busy["q"]
    queues = {x["name"]: x for x in snap["queues"]}
    views = queues["views"]
    assert views["queued"] == q.count == 3
    assert views["started"] == q.started_job_registry.count == 5
    assert views["failed"] == q.failed_job_registry.count == 1
    assert views["scheduled"] == q.scheduled_job_registry.count == 1
    assert views["deferred"] == q.deferred_job_registry.count == 1
    assert views["oldest_queued_age_s"] is not None and views["oldest_queued_age_s"] >= 0

    text = _cli("info", "-u", redis_url)
    assert text.returncode == 0, text.stderr
    assert f"{AJ}  asyncjobs" in text.stdout and "in flight 5/" in text.stdout
    assert "held-0" in text.stdout and "compat.jobs.async_hold" in text.stdout
    assert f"{STOCK_NAME}  rq" in text.stdout and "in flight 1/1" in text.stdout


def test_registration_carries_concurrency(busy: dict[str, Any], sync_redis: redis.Redis) -> None:
    data = sync_redis.hgetall(f"rq:worker:{AJ}")
    assert data.get(b"concurrency") == b"5"
    assert data[b"version"].decode().endswith(".c5")


def test_check(busy: dict[str, Any], redis_url: str, sync_redis: redis.Redis) -> None:
    ok = _cli("check", "-u", redis_url, "--name", AJ)
    assert ok.returncode == 0, ok.stderr
    assert AJ in ok.stdout
    assert _cli("check", "-u", redis_url, "views").returncode == 0  # by queue set
    missing = _cli("check", "-u", redis_url, "--name", "nobody")
    assert missing.returncode == 1 and "no worker named 'nobody'" in missing.stderr
    assert AJ in missing.stderr  # says who is registered instead
    wrong_set = _cli("check", "-u", redis_url, "views", "other")
    assert wrong_set.returncode == 1 and "for queues other,views" in wrong_set.stderr
    unreachable = _cli("check", "-u", "redis://127.0.0.1:1/0", "--name", AJ)
    assert unreachable.returncode == 1 and "Redis unreachable" in unreachable.stderr

    release(sync_redis, *[f"h{i}" for i in range(5)])
    busy["aj"].stop()
    assert busy["aj"].wait(60) == 0, busy["aj"].output()
    gone = _cli("check", "-u", redis_url, "--name", AJ)
    assert gone.returncode == 1, gone.stdout
    assert "no worker named" in gone.stderr or "registered its death" in gone.stderr
