"""The engine in-process against a real Redis: outages, shutdown paths, heartbeats, job context."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.results import Result

from asyncjobs import hooks as public_hooks
from tests.testsupport.redis_server import RedisServer
from tests.worker.conftest import eventually

J = "tests.worker.jobs"


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


async def test_results_survive_a_redis_outage(
    redis_server: RedisServer, sync_redis: redis.Redis, start_worker
) -> None:
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "outage")
    worker, task = await start_worker(concurrency=5, job_monitoring_interval=1)
    await eventually(lambda: status(sync_redis, held.id) == "started", what="job started")

    sync_redis.save()  # the server comes back with its data, like a restart with persistence
    redis_server.stop()
    jobs.gate("outage").set()  # the job ends while Redis is down ...
    # ... and its outcome waits in the worker's memory, unrecordable for now.
    await eventually(lambda: worker.recorder.pending.outcomes, what="outcome buffered during the outage")
    redis_server.start()

    await eventually(lambda: status(sync_redis, held.id) == "finished", what="result recorded after outage")
    job = Job.fetch(held.id, connection=sync_redis)
    assert job.return_value() == "released outage"
    # ... and the worker keeps working.
    after = q.enqueue(f"{J}.add", 20, 22)
    await eventually(lambda: status(sync_redis, after.id) == "finished", what="job after outage")
    assert Job.fetch(after.id, connection=sync_redis).return_value() == 42
    assert not task.done()


async def test_connection_drops_are_survived(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    _worker, _task = await start_worker(concurrency=5)
    first = q.enqueue(f"{J}.add", 1, 1)
    await eventually(lambda: status(sync_redis, first.id) == "finished")
    sync_redis.client_kill_filter(_type="normal", skipme=True)
    second = q.enqueue(f"{J}.add", 2, 2)
    await eventually(lambda: status(sync_redis, second.id) == "finished", what="job after CLIENT KILL")


async def test_cold_stop_puts_unfinished_jobs_back(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.wait_gate", "never").id for _ in range(3)]
    worker, task = await start_worker(concurrency=3)
    await eventually(lambda: all(status(sync_redis, i) == "started" for i in ids), what="3 started")
    worker.request_stop()
    worker.request_cold_stop()
    await asyncio.wait_for(task, 30)
    assert q.count == 3
    assert set(q.get_job_ids()) == set(ids)
    assert all(status(sync_redis, i) == "queued" for i in ids)
    assert q.started_job_registry.get_job_ids() == []
    assert not sync_redis.sismember("rq:workers", f"rq:worker:{worker.name}")


async def test_warm_stop_finishes_in_flight_jobs(sync_redis: redis.Redis, start_worker) -> None:
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "warm")
    waiting = q.enqueue(f"{J}.add", 1, 2)
    worker, task = await start_worker(concurrency=1, shutdown_timeout=30)
    await eventually(lambda: status(sync_redis, held.id) == "started")
    worker.request_stop()
    # RQ's marker of a warm shutdown requested while busy; the worker is still draining.
    await eventually(lambda: sync_redis.hget(f"rq:worker:{worker.name}", "shutdown_requested_date"))
    assert not task.done()
    jobs.gate("warm").set()
    await asyncio.wait_for(task, 30)
    assert status(sync_redis, held.id) == "finished"
    assert status(sync_redis, waiting.id) == "queued"  # never fetched after the stop
    assert sync_redis.hget(f"rq:worker:{worker.name}", "death")


async def test_heartbeats_keep_running_jobs_alive(sync_redis: redis.Redis, start_worker) -> None:
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "hb")
    worker, _task = await start_worker(concurrency=2, job_monitoring_interval=1)
    await eventually(lambda: status(sync_redis, held.id) == "started")
    member = next(iter(sync_redis.zrange("rq:wip:default", 0, -1)))
    first = sync_redis.zscore("rq:wip:default", member)
    await eventually(
        lambda: (sync_redis.zscore("rq:wip:default", member) or 0) > (first or 0), what="wip score refreshed"
    )
    assert sync_redis.ttl(f"rq:worker:{worker.name}") <= 61 + 1
    jobs.gate("hb").set()
    await eventually(lambda: status(sync_redis, held.id) == "finished")


async def test_sync_job_timeout_is_reported_with_rqs_message(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(f"{J}.spin_sync", 30, job_timeout=1)
    after = q.enqueue(f"{J}.add", 1, 1)
    _worker, task = await start_worker(concurrency=2, burst=True)
    await asyncio.wait_for(task, 30)
    fetched = Job.fetch(job.id, connection=sync_redis)
    assert fetched.get_status() == "failed"
    assert fetched.latest_result().exc_string.rstrip().endswith(
        "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"
    )
    assert status(sync_redis, after.id) == "finished"


async def test_get_current_job_per_concurrent_job(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.current_job_info", f"t{i}").id for i in range(10)]
    sync_ids = [q.enqueue(f"{J}.current_job_info_sync", f"s{i}").id for i in range(3)]
    _worker, task = await start_worker(concurrency=10, burst=True)
    await asyncio.wait_for(task, 30)
    for i, job_id in enumerate(ids):
        job = Job.fetch(job_id, connection=sync_redis)
        assert job.return_value() == {"id": job_id, "stock_id": job_id, "tag": f"t{i}"}
        assert job.get_meta()["tag"] == f"t{i}"  # save_meta() landed and the final save kept it
    for i, job_id in enumerate(sync_ids):
        job = Job.fetch(job_id, connection=sync_redis)
        assert job.return_value() == {"id": job_id, "tag": f"s{i}"}
        assert job.get_meta()["tag"] == f"s{i}"


async def test_allow_list_refuses_other_modules(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    refused = q.enqueue("os.getcwd")
    allowed = q.enqueue(f"{J}.add", 2, 2)
    _worker, task = await start_worker(burst=True, allowed_modules=("tests.worker",))
    await asyncio.wait_for(task, 30)
    job = Job.fetch(refused.id, connection=sync_redis)
    assert job.get_status() == "failed"
    assert "not in an allowed module" in job.latest_result().exc_string
    assert Job.fetch(allowed.id, connection=sync_redis).return_value() == 4


async def test_shutdown_hooks_run_once(sync_redis: redis.Redis, start_worker) -> None:
    calls: list[str] = []

    async def hook() -> None:
        calls.append("closed")

    public_hooks.on_shutdown(hook)
    _worker, task = await start_worker(burst=True)
    await asyncio.wait_for(task, 30)
    assert calls == ["closed"]


@pytest.fixture
async def webhook_sink(sync_redis: redis.Redis) -> AsyncIterator[tuple[str, list[dict], list[str | None]]]:
    """A real HTTP server receiving RQ webhooks: (url, bodies received, job status seen at each arrival)."""
    from aiohttp import web

    received: list[dict] = []
    statuses_seen: list[str | None] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        statuses_seen.append(status(sync_redis, body["job_id"]))
        received.append(body)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook", received, statuses_seen
    finally:
        await runner.cleanup()


async def test_webhooks_are_sent_after_the_terminal_state_is_stored(
    sync_redis: redis.Redis, start_worker, webhook_sink
) -> None:
    from rq.webhook import Webhook

    url, received, statuses_seen = webhook_sink
    q = Queue("default", connection=sync_redis)
    ok = q.enqueue(f"{J}.add", 1, 2, webhooks=[Webhook(url, "finished", method="POST")])
    bad = q.enqueue(f"{J}.spin_sync", "x", webhooks=[Webhook(url, "failed", method="POST")])
    _worker, task = await start_worker(burst=True, allow_webhook_hosts=("127.0.0.1",))
    await asyncio.wait_for(task, 30)
    await eventually(lambda: len(received) == 2, what="two webhooks")
    by_id = {r["job_id"]: r for r in received}
    assert by_id[ok.id]["status"] == "finished" and by_id[ok.id]["func_name"] == f"{J}.add"
    assert by_id[bad.id]["status"] == "failed" and "TypeError" in by_id[bad.id]["exc_info"]
    assert by_id[ok.id]["ended_at"]
    # The terminal state was already stored when each webhook arrived.
    assert sorted(statuses_seen) == ["failed", "finished"]


async def test_redis_refusing_writes_does_not_kill_the_worker(
    sync_redis: redis.Redis, redis_server: RedisServer, start_worker, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis turned read-only (a replica; OOM behaves alike): the worker logs, backs off, carries on, and
    records the outcome it was refused once writes are accepted again (issue 18 item 10: it was dropped,
    and the finished job was later failed as abandoned)."""
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "ro")
    worker, task = await start_worker(concurrency=2)
    await eventually(lambda: status(sync_redis, held.id) == "started")
    # A replica of a master that does not exist: keeps its data, refuses every write.
    sync_redis.execute_command("REPLICAOF", "127.0.0.1", str(redis_server.port + 1 if redis_server else 1))
    try:
        jobs.gate("ro").set()  # the job ends; storing its outcome is refused
        await eventually(lambda: worker.recorder.refused, what="the refusal handled")
        assert [o.job_id for o in worker.recorder.pending.outcomes] == [held.id]  # kept, not dropped
        assert not task.done()
    finally:
        sync_redis.execute_command("REPLICAOF", "NO", "ONE")
    # The kept outcome is recorded once Redis accepts writes: the job finished, ran once.
    await eventually(lambda: status(sync_redis, held.id) == "finished", what="the kept outcome recorded")
    assert not any(m.startswith(held.id.encode()) for m in sync_redis.zrange("rq:wip:default", 0, -1))
    # ... and the worker itself goes on working.
    after = q.enqueue(f"{J}.add", 3, 4)
    await eventually(lambda: status(sync_redis, after.id) == "finished", what="job after the episode")
    assert not task.done()


async def test_redis_out_of_memory_keeps_outcomes_and_claims_nothing(
    sync_redis: redis.Redis, start_worker
) -> None:
    """Issue 18 item 10: under ``maxmemory`` with ``noeviction`` the worker dropped the outcomes Redis
    refused (the jobs were later failed as abandoned) and went on claiming."""
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "oom")
    worker, task = await start_worker(concurrency=1)
    await eventually(lambda: status(sync_redis, held.id) == "started")
    waiting = q.enqueue(f"{J}.add", 1, 2)
    sync_redis.config_set("maxmemory-policy", "noeviction")
    sync_redis.config_set("maxmemory", "1")
    try:
        jobs.gate("oom").set()  # the job ends; storing its outcome is refused
        await eventually(lambda: worker.recorder.refused, what="the refusal")
        assert [o.job_id for o in worker.recorder.pending.outcomes] == [held.id]
        assert status(sync_redis, waiting.id) == "queued"  # not claimed while outcomes are refused
        assert not task.done()
    finally:
        sync_redis.config_set("maxmemory", "0")
    await eventually(lambda: status(sync_redis, held.id) == "finished", what="the kept outcome recorded")
    await eventually(lambda: status(sync_redis, waiting.id) == "finished", what="the waiting job")
    assert Job.fetch(held.id, connection=sync_redis).latest_result().type == Result.Type.SUCCESSFUL


async def test_job_canceled_while_running_stays_canceled(sync_redis: redis.Redis, start_worker) -> None:
    """Documented difference: stock overwrites `canceled` with `finished`; asyncjobs keeps the user's cancel."""
    from rq.registry import CanceledJobRegistry, FinishedJobRegistry

    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    held = q.enqueue(f"{J}.wait_gate", "cancel")
    _worker, _task = await start_worker(concurrency=2)
    await eventually(lambda: status(sync_redis, held.id) == "started")
    Job.fetch(held.id, connection=sync_redis).cancel()
    jobs.gate("cancel").set()
    after = q.enqueue(f"{J}.add", 1, 1)  # the outcome is stored before this one is claimed
    await eventually(lambda: status(sync_redis, after.id) == "finished")
    assert status(sync_redis, held.id) == "canceled"
    assert held.id in CanceledJobRegistry(queue=q).get_job_ids()
    assert held.id not in FinishedJobRegistry(queue=q).get_job_ids()
    assert sync_redis.zcard("rq:wip:default") == 0


async def test_a_returned_retry_that_runs_out_sends_failed_webhooks(
    sync_redis: redis.Redis, start_worker, webhook_sink
) -> None:
    """Stock: a MAX_RETRIES_EXCEEDED outcome is a terminal failure and fires the `failed` webhooks."""
    from rq.webhook import Webhook

    url, received, statuses_seen = webhook_sink
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(f"{J}.always_retry", 1, webhooks=[Webhook(url, "failed", method="POST")])
    _worker, task = await start_worker(burst=True, allow_webhook_hosts=("127.0.0.1",))
    await asyncio.wait_for(task, 30)
    assert status(sync_redis, job.id) == "failed"
    await eventually(lambda: len(received) == 1, what="one failed webhook")
    assert received[0]["job_id"] == job.id and received[0]["status"] == "failed"
    assert statuses_seen == ["failed"]


async def test_maintenance_passes_the_exception_handlers_for_abandoned_jobs(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """Stock's maintenance calls the worker's --exception-handler for each abandoned job it fails."""
    from asyncjobs.worker.config import WorkerConfig
    from asyncjobs.worker.maintenance import Maintenance
    from tests.worker import jobs

    jobs.handled.clear()
    q = Queue("default", connection=sync_redis)
    job = q.enqueue(f"{J}.add", 1, 2)
    sync_redis.lpop("rq:queue:default")
    sync_redis.hset(f"rq:job:{job.id}", "status", "started")
    sync_redis.zadd("rq:wip:default", {f"{job.id}:deadbeef": 1})  # its worker died long ago
    config = WorkerConfig(queues=("default",), redis_url=redis_url, exception_handlers=(f"{J}.recording_handler",))
    maint = Maintenance(config, None, [jobs.recording_handler])
    await asyncio.to_thread(maint.run_once, "maint-test")
    assert status(sync_redis, job.id) == "failed"
    assert jobs.handled == [f"{job.id}:AbandonedJobError"]


async def test_claim_batch_bounds_each_round_trip(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--claim-batch N: each exchange stores at most N outcomes and claims at most N jobs, so a wave of
    jobs ending together is stored and refilled in overlapping round trips (issue 23), and the outcomes
    beyond N wait for the next one: none is lost, each stored once."""
    from asyncjobs.protocol.store import RedisStore
    from tests.worker import jobs

    calls: list[tuple[int, int]] = []
    real = RedisStore.exchange

    async def spy(self: RedisStore, outcomes, request):  # type: ignore[no-untyped-def]
        calls.append((len(outcomes.transitions) if outcomes is not None else 0, request.count))
        return await real(self, outcomes, request)

    monkeypatch.setattr(RedisStore, "exchange", spy)
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(f"{J}.wait_gate", "wave").id for _ in range(12)]
    worker, task = await start_worker(concurrency=12, claim_batch=4, burst=True)
    await eventually(lambda: all(status(sync_redis, i) == "started" for i in ids), what="12 started")
    assert [c for _, c in calls if c] == [4, 4, 4]  # twelve free slots, claimed four at a time
    jobs.gate("wave").set()  # all twelve end together
    await asyncio.wait_for(task, 30)
    assert all(status(sync_redis, i) == "finished" for i in ids)
    stored = [n for n, _ in calls if n]
    assert max(stored) == 4 and sum(stored) == 12, calls
    assert worker.successful == 12


def test_claim_batch_default_and_bounds() -> None:
    from asyncjobs.worker.config import WorkerConfig

    assert WorkerConfig(queues=("q",), concurrency=50).claim_batch_size == 8
    assert WorkerConfig(queues=("q",), concurrency=400).claim_batch_size == 50
    assert WorkerConfig(queues=("q",), concurrency=400, claim_batch=3).claim_batch_size == 3
    with pytest.raises(ValueError, match="--claim-batch must be at least 1, got 0"):
        WorkerConfig(queues=("q",), claim_batch=0)


async def test_worker_hash_names_a_running_job_while_busy(sync_redis: redis.Redis, start_worker) -> None:
    """What `rq info` reads in the worker hash, through the claims that follow an idle spell, the ones
    that store outcomes in the same call (the claim then skips writes the finish just made) and the
    last outcome: busy with a running job's id, then idle with none."""
    from tests.worker import jobs

    q = Queue("default", connection=sync_redis)
    worker, _task = await start_worker(concurrency=2)
    key = f"rq:worker:{worker.name}"

    def hash_state() -> tuple[str | None, str | None]:
        state, current = sync_redis.hmget(key, ["state", "current_job"])
        return (state.decode() if state else None, current.decode() if current else None)

    await eventually(lambda: hash_state()[0] == "idle", what="idle worker")
    long = q.enqueue(f"{J}.wait_gate", "long")
    await eventually(lambda: hash_state() == ("busy", long.id), what="busy after an idle claim")
    short = q.enqueue(f"{J}.wait_gate", "short")
    await eventually(lambda: status(sync_redis, short.id) == "started")
    after = q.enqueue(f"{J}.wait_gate", "after")  # waits for short's slot: claimed as short is stored
    jobs.gate("short").set()
    await eventually(lambda: status(sync_redis, after.id) == "started", what="claimed with short's outcome")
    assert hash_state()[0] == "busy" and hash_state()[1] in (long.id, after.id), hash_state()
    jobs.gate("long").set()
    jobs.gate("after").set()
    await eventually(lambda: hash_state() == ("idle", None), what="idle with no current job")


async def test_default_claim_batch_bounds_claims_while_the_worker_has_cpu_to_spare(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --claim-batch, a worker with CPU to spare (here: idle) claims claim_batch_size at a time
    (8 at --concurrency 24)."""
    from asyncjobs.protocol.store import RedisStore
    from tests.worker import jobs

    calls: list[int] = []
    real = RedisStore.exchange

    async def spy(self: RedisStore, outcomes, request):  # type: ignore[no-untyped-def]
        calls.append(request.count)
        return await real(self, outcomes, request)

    monkeypatch.setattr(RedisStore, "exchange", spy)
    monkeypatch.setattr("asyncjobs.worker.worker.CPU_WINDOW", 0.05)
    q = Queue("default", connection=sync_redis)
    worker, _task = await start_worker(concurrency=24, block_timeout=0.05)
    # a worker starts as busy; idle windows (its claims of an empty queue) show time to spare
    await eventually(lambda: len(calls) >= 5, what="a few claims of the empty queue")
    del calls[:]
    waiting = [q.enqueue(f"{J}.wait_gate", "idle-cpu").id for _ in range(24)]
    await eventually(lambda: all(status(sync_redis, i) == "started" for i in waiting), what="24 started")
    assert [c for c in calls if c] == [8, 8, 8]
    jobs.gate("idle-cpu").set()
    await eventually(lambda: worker.successful == 24, what="24 jobs")


async def test_an_idle_worker_bounds_its_claims_after_a_first_short_window(
    sync_redis: redis.Redis, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker starts as busy, but its first look at its demand comes FIRST_CPU_WINDOW after its first
    claim, not CPU_WINDOW: 50 ms jobs claimed in one wave at start-up would otherwise keep moving as one
    wave for the whole first window."""
    from asyncjobs.protocol.store import RedisStore
    from asyncjobs.worker import worker as worker_mod
    from tests.worker import jobs

    calls: list[tuple[float, int]] = []
    real = RedisStore.exchange

    async def spy(self: RedisStore, outcomes, request):  # type: ignore[no-untyped-def]
        calls.append((time.monotonic(), request.count))
        return await real(self, outcomes, request)

    monkeypatch.setattr(RedisStore, "exchange", spy)
    monkeypatch.setattr(worker_mod, "CPU_WINDOW", 60.0)  # later windows never end in this test
    q = Queue("default", connection=sync_redis)
    worker, _task = await start_worker(concurrency=24, block_timeout=0.05)
    await eventually(lambda: len(calls) >= 1, what="a first claim")
    first = calls[0][0]
    await eventually(lambda: calls[-1][0] - first >= worker_mod.FIRST_CPU_WINDOW + 0.05,
                     what="claims of the empty queue past the first window")
    del calls[:]
    waiting = [q.enqueue(f"{J}.wait_gate", "first-window").id for _ in range(24)]
    await eventually(lambda: all(status(sync_redis, i) == "started" for i in waiting), what="24 started")
    assert [c for _, c in calls if c] == [8, 8, 8]
    jobs.gate("first-window").set()
    await eventually(lambda: worker.successful == 24, what="24 jobs")


def test_claim_limit_lifts_the_default_bound_only_for_a_busy_process() -> None:
    """A process using BUSY_CPU of a core or more has jobs waiting for the CPU, not for round trips:
    one exchange takes all that are ready.  --claim-batch given always applies."""
    from asyncjobs.worker.config import WorkerConfig
    from asyncjobs.worker.worker import BUSY_CPU, claim_limit

    default = WorkerConfig(queues=("q",), concurrency=50)
    assert claim_limit(default, 0.0) == claim_limit(default, BUSY_CPU - 0.01) == 8
    assert claim_limit(default, BUSY_CPU) == claim_limit(default, 1.0) == 50
    given = WorkerConfig(queues=("q",), concurrency=50, claim_batch=5)
    assert claim_limit(given, 0.0) == claim_limit(given, 1.0) == 5


def test_thread_demand_counts_the_time_the_thread_runs() -> None:
    """What the default claim batch watches: the loop thread's time on (or waiting for) a CPU."""
    import time

    from asyncjobs.worker.worker import thread_demand

    before, t0 = thread_demand(), time.monotonic()
    while time.monotonic() - t0 < 0.1:
        pass
    assert thread_demand() - before >= 0.05
    before = thread_demand()
    time.sleep(0.1)  # asleep is neither running nor waiting for a CPU
    assert thread_demand() - before < 0.05


async def test_an_idle_worker_on_many_queues_blocks_on_a_bounded_number_of_them(
    sync_redis: redis.Redis, start_worker
) -> None:
    """One blocking wait (a connection) per queue does not scale: an idle worker on 200 queues held
    96 (redis-py's pool holds 100) and the other waits failed with "Too many connections"; a fleet of
    them would exhaust Redis's maxclients.  It blocks on the first MAX_BLOCKING_WAITS queues and polls
    the rest: a job on the last queue, which no wait watches, still runs."""
    from asyncjobs.worker.worker import MAX_BLOCKING_WAITS

    queues = tuple(f"many{i}" for i in range(200))
    worker, _task = await start_worker(queues=queues, concurrency=4, block_timeout=5)

    def blocked() -> int:
        return int(sync_redis.info("clients")["blocked_clients"])

    await eventually(lambda: blocked() >= min(MAX_BLOCKING_WAITS, len(queues)), what="the worker's blocking waits")
    assert blocked() <= MAX_BLOCKING_WAITS
    job = Queue("many199", connection=sync_redis).enqueue(f"{J}.add", 2, 3)
    await eventually(lambda: worker.successful == 1, timeout=5, what="the job on the last queue")
    assert status(sync_redis, job.id) == "finished"
