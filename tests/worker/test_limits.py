"""Queue limits enforced when a job is claimed (issue 20): fleet-wide concurrency and rate,
pause/resume, ``Throttled`` back-pressure and per-worker caps, with in-process workers on a real
Redis.  What is asserted is which jobs ran and in what order, never how fast."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from rq import Queue

from asyncjobs.limits import QueueControl, Rate, Throttled, parse_duration
from tests.worker import jobs
from tests.worker.conftest import eventually

J = "tests.worker.jobs"


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


async def test_rate_limited_queue_does_not_hold_back_the_next_queue(sync_redis: redis.Redis, start_worker) -> None:
    # The measurement: --concurrency 20 --queues sms,emails, SMS at 5/s, 100 SMS then 20
    # emails.  With the rate inside the task the emails waited behind slots holding SMS; with the
    # rate on the queue the claim skips `sms` once out of tokens and serves `emails` at once.
    QueueControl(sync_redis).limit("sms", rate="5/s")
    sms, emails = Queue("sms", connection=sync_redis), Queue("emails", connection=sync_redis)
    for i in range(100):
        sms.enqueue(f"{J}.record", f"sms{i}")
    email_ids = [emails.enqueue(f"{J}.record", f"email{i}").id for i in range(20)]
    worker, _ = await start_worker(queues=("sms", "emails"), concurrency=20)
    await eventually(lambda: all(status(sync_redis, i) == "finished" for i in email_ids), what="20 emails done")
    tags = [t for t, _ in jobs.starts]
    last_email = max(i for i, t in enumerate(tags) if t.startswith("email"))
    sms_before = sum(1 for t in tags[:last_email] if t.startswith("sms"))
    # Every email started before most SMS: at 5/s only the first window's SMS (and a few more on
    # a slow machine) can have gone first.
    assert sms_before < 50, tags
    assert sms.count > 40  # the rest of the SMS still wait on their queue, not in a worker slot
    assert "sms" in worker._blocked
    # No slot held by a job waiting for its limit: the SMS a window lets through end at once (one may
    # be running at the moment the emails are done: that made this assertion flaky under load).
    await eventually(lambda: len(worker.slots) == 0, what="every slot free between rate windows")


async def test_fleet_concurrency_across_two_workers(sync_redis: redis.Redis, start_worker) -> None:
    QueueControl(sync_redis).limit("calls", concurrency=3)
    q = Queue("calls", connection=sync_redis)
    ids = [q.enqueue(f"{J}.counted", 0.05).id for _ in range(12)]
    for _ in range(2):
        await start_worker(queues=("calls",), concurrency=5, burst=True)
    await eventually(lambda: all(status(sync_redis, i) == "finished" for i in ids), what="12 jobs done")
    assert jobs.running["max"] == 3


async def test_rate_shared_by_two_burst_workers(sync_redis: redis.Redis, start_worker) -> None:
    QueueControl(sync_redis).limit("api", rate="10/s")
    q = Queue("api", connection=sync_redis)
    for i in range(25):
        q.enqueue(f"{J}.record", f"api{i}")
    tasks = [(await start_worker(queues=("api",), concurrency=10, burst=True))[1] for _ in range(2)]
    await asyncio.wait_for(asyncio.gather(*tasks), 60)  # burst workers wait for the rate, then exit
    times = sorted(t for _, t in jobs.starts)
    assert len(times) == 25 and q.count == 0
    # Never more than the rate (plus, for the recording's own delays, the burst) in any 1 s window.
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 20


async def test_pause_and_resume_one_queue(sync_redis: redis.Redis, start_worker) -> None:
    control = QueueControl(sync_redis)
    control.pause("a")
    a, b = Queue("a", connection=sync_redis), Queue("b", connection=sync_redis)
    held = a.enqueue(f"{J}.record", "a")
    free = b.enqueue(f"{J}.record", "b")
    worker, _ = await start_worker(queues=("a", "b"), concurrency=2)
    await eventually(lambda: status(sync_redis, free.id) == "finished", what="b's job")
    await eventually(lambda: worker._blocked.get("a") == -1, what="a seen paused")
    assert status(sync_redis, held.id) == "queued"
    assert control.get("a").paused_until == float("inf")
    control.resume("a")
    await eventually(lambda: status(sync_redis, held.id) == "finished", what="a's job after resume")
    assert [t for t, _ in jobs.starts] == ["b", "a"]
    # Paused again while the worker runs: it obeys within a second, with no restart.
    control.pause("a")
    await eventually(lambda: "a" in (worker._limited or ()), what="the pause seen (re-read every second)")
    later = a.enqueue(f"{J}.record", "later")
    await eventually(lambda: worker._blocked.get("a") == -1, what="a held back again")
    assert status(sync_redis, later.id) == "queued"


async def test_timed_pause_ends_by_itself(sync_redis: redis.Redis, start_worker) -> None:
    QueueControl(sync_redis).pause("a", seconds=0.5)
    job = Queue("a", connection=sync_redis).enqueue(f"{J}.record", "a")
    worker, _ = await start_worker(queues=("a",), concurrency=1)
    await eventually(lambda: "a" in worker._blocked, what="a seen paused")
    assert status(sync_redis, job.id) == "queued"
    await eventually(lambda: status(sync_redis, job.id) == "finished", what="job after the pause")


async def test_throttled_job_goes_back_and_pauses_its_queue(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("sms", connection=sync_redis)
    job = q.enqueue(f"{J}.throttled_once", "k", 0.3, retry=None)
    await start_worker(queues=("sms",), concurrency=2)
    await eventually(lambda: status(sync_redis, job.id) == "finished", what="throttled job run again")
    assert job.latest_result().return_value == "ran k after throttling"
    assert jobs.seen == ["k", "k"]
    assert q.failed_job_registry.count == 0
    assert QueueControl(sync_redis).get("sms").paused_until is not None  # the pause was set (now over)


async def test_own_queue_cap_leaves_slots_to_other_queues(sync_redis: redis.Redis, start_worker) -> None:
    a, b = Queue("a", connection=sync_redis), Queue("b", connection=sync_redis)
    a_ids = [a.enqueue(f"{J}.wait_gate", "cap").id for _ in range(4)]
    b_ids = [b.enqueue(f"{J}.wait_gate", "cap").id for _ in range(2)]
    await start_worker(queues=("a", "b"), concurrency=5, queue_limits=(("a", 2),))
    await eventually(lambda: all(status(sync_redis, i) == "started" for i in b_ids), what="b's jobs started")
    assert sorted(status(sync_redis, i) for i in a_ids) == ["queued", "queued", "started", "started"]
    jobs.gate("cap").set()
    await eventually(lambda: all(status(sync_redis, i) == "finished" for i in a_ids), what="a's jobs done")


def test_values_are_checked() -> None:
    assert Rate.parse("20/s") == Rate(20, 1000)
    assert Rate.parse("5/10s") == Rate(5, 10_000)
    assert str(Rate.parse("600/m")) == "600/m"
    assert parse_duration("10m") == 600
    with pytest.raises(ValueError, match="'20 per second' is not <count>/<period>"):
        Rate.parse("20 per second")
    with pytest.raises(ValueError, match="retry_after=-1"):
        Throttled(-1)
    with pytest.raises(ValueError, match="concurrency 0"):
        QueueControl(None).limit("sms", concurrency=0)


@pytest.fixture
async def store(redis_url: str):  # type: ignore[no-untyped-def]
    from redis.asyncio import Redis

    from asyncjobs.protocol.store import RedisStore

    conn = Redis.from_url(redis_url)
    try:
        yield RedisStore(conn, "limits-test", heartbeat_ttl=90)
    finally:
        await conn.aclose()


async def test_no_limits_cost_no_command_per_claim(store, sync_redis: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    q = Queue("b", connection=sync_redis)
    q.enqueue(f"{J}.record", "b")
    await store.exchange(None, store.claim_request(["empty"], 1, ["a" * 32]))  # the script loaded
    sync_redis.config_resetstat()
    # The worker knows (from its once-a-second read) that none of its queues has limits: no read.
    request = store.claim_request(["a", "b"], 2, ["b" * 32, "c" * 32], check_limits=False)
    (claimed,) = (await store.exchange(None, request)).jobs
    assert claimed.queue == "b"
    assert not {"cmdstat_hmget", "cmdstat_time", "cmdstat_zcount", "cmdstat_zcard"} & set(
        sync_redis.info("commandstats"))
    # Otherwise one HMGET, and nothing more while none of the claim's queues has a limit.
    q.enqueue(f"{J}.record", "b")
    sync_redis.config_resetstat()
    assert len((await store.exchange(None, store.claim_request(["a", "b"], 1, ["d" * 32]))).jobs) == 1
    stats = sync_redis.info("commandstats")
    assert stats["cmdstat_hmget"]["calls"] == 1
    assert not {"cmdstat_time", "cmdstat_zcount", "cmdstat_zcard"} & set(stats)


async def test_a_dead_workers_slot_comes_back_when_its_lease_ends(store, sync_redis: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    QueueControl(sync_redis).limit("q", concurrency=1)
    q = Queue("q", connection=sync_redis)
    q.enqueue(f"{J}.record", "q")
    now = sync_redis.time()[0]
    # A running job of a worker that still heartbeats holds the one slot ...
    sync_redis.zadd("rq:wip:q", {"live:1": now + 60})
    result = await store.exchange(None, store.claim_request(["q"], 1, ["d" * 32]))
    assert result.jobs == [] and result.blocked == {"q": 1000}
    # ... one whose worker was SIGKILLed does not, once its heartbeat deadline (the lease) passed.
    sync_redis.zadd("rq:wip:q", {"live:1": now - 1})
    result = await store.exchange(None, store.claim_request(["q"], 1, ["e" * 32]))
    assert [c.queue for c in result.jobs] == ["q"]


def test_queue_limit_flag() -> None:
    from asyncjobs.cli.worker import build_parser, config_from_args

    args = build_parser().parse_args(["--queues", "sms,emails", "--queue-limit", "sms=5"])
    assert config_from_args(args).queue_limits == (("sms", 5),)
    with pytest.raises(ValueError, match="'sms=none' is not QUEUE=N"):
        config_from_args(build_parser().parse_args(["-Q", "sms", "--queue-limit", "sms=none"]))
    with pytest.raises(ValueError, match="'fax' is not one of --queues"):
        config_from_args(build_parser().parse_args(["-Q", "sms", "--queue-limit", "fax=1"]))


def test_queues_cli_sets_shows_and_clears(redis_url: str, sync_redis: redis.Redis, capsys) -> None:  # type: ignore[no-untyped-def]
    from rq import Worker

    from asyncjobs.cli.worker import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--url", redis_url])
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("queues", "limit", "sms", "--concurrency", "3", "--rate", "20/s") == (
        0, "sms: concurrency 3, rate 20/s\n", "")
    assert run("queues", "pause", "sms", "--for", "10m")[1] == "sms: concurrency 3, rate 20/s, paused (timed) (for 600s)\n"
    Queue("sms", connection=sync_redis).enqueue(f"{J}.record", "x")
    Worker(["sms"], connection=sync_redis, name="stock-one").register_birth()  # a stock worker on the queue
    code, out, err = run("queues")
    assert code == 0
    assert "sms                        1        0  running 0/3  rate 20/s (0 in window)  paused until " in out
    assert "stock worker stock-one serves sms: it does not know queue limits or pauses" in err
    code, out, _ = run("info")
    assert "Queue limits (fleet-wide; `asyncjobs-worker queues`)" in out and "running 0/3" in out
    assert run("queues", "resume", "sms")[1] == "sms: concurrency 3, rate 20/s\n"
    assert run("queues", "limit", "sms", "--clear", "--rate", "1/s")[1] == "sms: concurrency 3\n"
    assert run("queues", "limit", "sms", "--clear")[1] == "sms: no limits\n"
    code, _, err = run("queues", "limit", "sms", "--rate", "fast")
    assert code == 2 and "rate 'fast' is not <count>/<period>" in err
    code, _, err = run("queues", "limit", "sms")
    assert code == 2 and "give --concurrency N and/or --rate N/PERIOD, or --clear" in err


def test_queue_sampler_exports_limits(sync_redis: redis.Redis, redis_url: str) -> None:
    pytest.importorskip("prometheus_client")
    from asyncjobs.host.sampler import QueueSampler

    QueueControl(sync_redis).limit("sms", concurrency=4, rate="30/m")
    QueueControl(sync_redis).pause("sms")
    sync_redis.zadd("rq:wip:sms", {"job:1": sync_redis.time()[0] + 60})
    sampler = QueueSampler(lambda: redis.Redis.from_url(redis_url), ["sms", "emails"])
    try:
        sampler.sample_once()
        got = {
            (f.name, tuple(sorted(smp.labels.items()))): smp.value
            for f in sampler.collect() for smp in f.samples if f.name.startswith("asyncjobs_queue_")
        }
    finally:
        sampler.stop()
    assert got[("asyncjobs_queue_running", (("queue", "sms"),))] == 1
    assert got[("asyncjobs_queue_paused", (("queue", "sms"),))] == 1
    assert got[("asyncjobs_queue_paused", (("queue", "emails"),))] == 0
    assert got[("asyncjobs_queue_limit", (("limit", "concurrency"), ("queue", "sms")))] == 4
    assert got[("asyncjobs_queue_limit", (("limit", "rate_per_second"), ("queue", "sms")))] == 0.5


async def test_tenant_pattern_serves_a_small_tenant_beside_a_burst(sync_redis: redis.Redis, start_worker) -> None:
    big, small = Queue("emails:big", connection=sync_redis), Queue("emails:small", connection=sync_redis)
    big.enqueue_many([Queue.prepare_data(f"{J}.record", (f"big{i}",)) for i in range(2000)])
    small_ids = [small.enqueue(f"{J}.record", f"small{i}").id for i in range(5)]
    await start_worker(queues=("emails:*",), concurrency=10)
    await eventually(lambda: all(status(sync_redis, i) == "finished" for i in small_ids), what="the small tenant's jobs")
    tags = [t for t, _ in jobs.starts]
    last_small = max(i for i, t in enumerate(tags) if t.startswith("small"))
    assert last_small < 12, tags[:20]  # in the first claim (an even share of its slots), not behind the burst
    # A tenant queue that appears later is served too (RQ's queue set is re-read).
    late = Queue("emails:late", connection=sync_redis).enqueue(f"{J}.record", "late")
    await eventually(lambda: status(sync_redis, late.id) == "finished", what="a new tenant's job")


async def test_scheduler_follows_a_pattern_to_queues_that_appear_later(sync_redis: redis.Redis, start_worker) -> None:
    """--with-scheduler with --queues 'emails:*': a tenant queue that appears after the worker started
    gets its scheduled jobs (and retry delays) moved too, not only the queues matched at start."""
    from datetime import timedelta

    early = Queue("emails:early", connection=sync_redis).enqueue(f"{J}.record", "early")
    await start_worker(queues=("emails:*",), concurrency=4, with_scheduler=True)
    await eventually(lambda: status(sync_redis, early.id) == "finished", what="the first tenant's job")
    late = Queue("emails:late", connection=sync_redis).enqueue_in(timedelta(seconds=1), f"{J}.record", "late")
    assert status(sync_redis, late.id) == "scheduled"
    await eventually(lambda: status(sync_redis, late.id) == "finished", timeout=20,
                     what="a scheduled job of a queue that appeared later")


async def test_tenant_pattern_cap_applies_to_each_queue(sync_redis: redis.Redis, start_worker) -> None:
    ids = {t: [Queue(f"t:{t}", connection=sync_redis).enqueue(f"{J}.wait_gate", "t").id for _ in range(3)]
           for t in ("a", "b")}
    await start_worker(queues=("t:*",), concurrency=10, queue_limits=(("t:*", 1),))
    await eventually(lambda: all(status(sync_redis, i[0]) == "started" for i in ids.values()), what="one per tenant")
    assert [status(sync_redis, i) for t in ids for i in ids[t][1:]] == ["queued"] * 4
    jobs.gate("t").set()
    await eventually(lambda: all(status(sync_redis, i) == "finished" for t in ids for i in ids[t]), what="all done")


def test_drain_finishes_what_runs_claims_nothing_and_exits_0(  # type: ignore[no-untyped-def]
    redis_url: str, sync_redis: redis.Redis, tmp_path, capsys
) -> None:
    from asyncjobs.cli.worker import main
    from tests.testsupport.workers import run_asyncjobs_worker, wait_for

    q = Queue("d", connection=sync_redis)
    gate = tmp_path / "go"
    running = q.enqueue("tests.ops.jobs.wait_for_file", str(gate))
    with run_asyncjobs_worker(redis_url, "d", "--name", "drainme", "--concurrency", "2") as worker:
        wait_for(lambda: status(sync_redis, running.id) == "started", 30, message=worker.output)
        # Its command channel is subscribed a moment after its first claim may run.
        wait_for(lambda: sync_redis.pubsub_numsub("rq:pubsub:drainme")[0][1] == 1, 30, message=worker.output)
        assert main(["drain", "drainme", "--url", redis_url]) == 0
        assert capsys.readouterr().out == "drainme: drain sent to drainme\n"
        wait_for(lambda: "drain requested" in worker.output(), 30, message=worker.output)
        later = q.enqueue("tests.ops.jobs.ok", 1)
        gate.touch()
        assert worker.wait(60) == 0, worker.output()
    assert status(sync_redis, running.id) == "finished"
    assert status(sync_redis, later.id) == "queued"
    assert main(["drain", "nobody", "--url", redis_url]) == 1
    assert "no live worker named 'nobody' is listening" in capsys.readouterr().err


async def test_limits_live_under_the_key_prefix(redis_url: str, sync_redis: redis.Redis) -> None:
    """With a hash-tag prefix the limits hash and rate logs share the slot of RQ's keys (Redis
    Cluster); a pause under one prefix holds back only that prefix's queue."""
    from redis.asyncio import Redis

    from asyncjobs.protocol.keys import Keys
    from asyncjobs.protocol.store import RedisStore

    keys = Keys("{rq}")
    assert keys.queue_limits == "{rq}:asyncjobs:queue-limits"
    QueueControl(sync_redis, keys).pause("q")
    sync_redis.rpush("{rq}:queue:q", "some-job")
    conn = Redis.from_url(redis_url)
    try:
        store = RedisStore(conn, "prefixed", keys=keys)
        result = await store.exchange(None, store.claim_request(["q"], 1, ["f" * 32]))
    finally:
        await conn.aclose()
    assert result.jobs == [] and result.blocked == {"q": -1}
    assert sync_redis.lrange("{rq}:queue:q", 0, -1) == [b"some-job"]
    assert QueueControl(sync_redis).get("q").paused_until is None  # the default prefix's queue: not paused


def test_a_sigkilled_workers_slot_returns_when_its_lease_ends_not_before(  # type: ignore[no-untyped-def]
    redis_url: str, sync_redis: redis.Redis, tmp_path
) -> None:
    """Real processes: worker A holds the one fleet slot of ``lq`` and is SIGKILLed; worker B keeps the next
    job queued while A's lease (its heartbeat deadline in ``rq:wip``, 61 s here) is live, and starts it
    within seconds once the lease has run out (the wait is shortened by moving the deadline, as the
    clock would)."""
    import signal

    from tests.testsupport.workers import run_asyncjobs_worker, wait_for

    QueueControl(sync_redis).limit("lq", concurrency=1)
    q = Queue("lq", connection=sync_redis)
    held = q.enqueue("tests.ops.jobs.wait_for_file", str(tmp_path / "never"), 300)
    a = run_asyncjobs_worker(redis_url, "lq", "--job-monitoring-interval", "1")
    try:
        wait_for(lambda: status(sync_redis, held.id) == "started", 30, message=a.output)
        a.signal(signal.SIGKILL)
        a.wait(10)
    finally:
        a.close()
    (member,) = sync_redis.zrange("rq:wip:lq", 0, -1)
    deadline = sync_redis.zscore("rq:wip:lq", member)
    assert deadline is not None and deadline > sync_redis.time()[0] + 50  # the lease A left: about 61 s
    nxt = q.enqueue("tests.ops.jobs.ok", 7)
    with run_asyncjobs_worker(redis_url, "lq") as b:
        wait_for(lambda: "started: queues=lq" in b.output(), 30, message=b.output)
        time.sleep(3)  # B claims meanwhile (a blocked queue is retried every second): the live lease keeps the slot
        assert status(sync_redis, nxt.id) == "queued", b.output()
        sync_redis.zadd("rq:wip:lq", {member: sync_redis.time()[0] - 1})  # the lease has run out
        wait_for(lambda: status(sync_redis, nxt.id) == "finished", 10, message=b.output)
