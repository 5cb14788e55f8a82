"""The chaos harness itself, in ``make test``.

- Its checker passes stock RQ on a fault-free run (no false alarm on RQ's own semantics), and
  catches each kind of violation planted in that run's data.
- Its abandoned-job recovery never fails a job that a live worker still runs.
- One short scenario runs end to end against real asyncjobs and stock worker processes.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.worker import SimpleWorker

from tests.chaos import ledger as ledger_mod
from tests.chaos.checker import Facts, Verdict, check
from tests.chaos.cluster import QUEUES
from tests.chaos.plan import JobSpec, enqueue, make_plan
from tests.chaos.recovery import recover_abandoned
from tests.chaos.runner import SCENARIOS, run_scenario
from tests.testsupport.workers import run_rq_worker

UNIT_MIX = {"ok": 0.45, "retry": 0.35, "boom": 0.1, "child": 0.1}


@pytest.fixture
def stock_run(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> tuple[list[JobSpec], Path]:
    """A seeded plan run to the end by a stock burst ``rq worker`` (SimpleWorker), no faults."""
    ledger = tmp_path / "ledger.txt"
    plan = make_plan("unit", 80, random.Random(7), UNIT_MIX)
    enqueue(sync_redis, plan.specs)
    env = {"CHAOS_LEDGER": str(ledger), "CHAOS_SIDE_URL": redis_url}
    with run_rq_worker(redis_url, QUEUES, "--burst", env=env) as worker:
        assert worker.wait(120) == 0, worker.output()
    return plan.specs, ledger


def _check(conn: redis.Redis, specs: list[JobSpec], ledger: Path, facts: Facts | None = None) -> Verdict:
    return check(conn, specs, ledger_mod.read(ledger), facts or Facts())


def _pick(specs: list[JobSpec], conn: redis.Redis, kind: str, status: str, skip: set[str]) -> str:
    for s in specs:
        if s.kind == kind and s.id not in skip and conn.hget(f"rq:job:{s.id}", "status") == status.encode():
            skip.add(s.id)
            return s.id
    raise AssertionError(f"the seeded plan has no {status} {kind} job left to tamper with")


def test_checker_passes_stock_rq_on_a_fault_free_run(sync_redis: redis.Redis, stock_run: tuple[list[JobSpec], Path]) -> None:
    specs, ledger = stock_run
    v = _check(sync_redis, specs, ledger)
    assert v.problems == [], "\n".join(map(str, v.problems))
    assert v.terminal["finished"] > 0 and v.terminal["failed"] > 0
    assert sum(v.terminal.values()) == len(specs)
    retried = [s for s in specs if s.kind == "retry" and 0 < s.fail_first <= s.max_retries]
    assert retried, "the seeded plan must hold a job that succeeds after retries"


def test_checker_catches_each_kind_of_violation(sync_redis: redis.Redis, stock_run: tuple[list[JobSpec], Path]) -> None:
    specs, ledger = stock_run
    conn = sync_redis
    used: set[str] = set()
    lost = _pick(specs, conn, "ok", "finished", used)
    conn.delete(f"rq:job:{lost}")
    requeued = _pick(specs, conn, "ok", "finished", used)
    conn.rpush("rq:queue:chaos", requeued)
    twice = _pick(specs, conn, "ok", "finished", used)
    with ledger.open("a") as f:  # a second, complete run of a job nobody killed
        f.write(f"B {twice} extra-token 1 {time.time():.6f}\nE {twice} extra-token 1 {time.time():.6f}\n")
    duplicate = _pick(specs, conn, "ok", "finished", used)
    entry = conn.xrange(f"rq:results:{duplicate}")[0][1]
    conn.xadd(f"rq:results:{duplicate}", entry)
    retry = next(s for s in specs if s.kind == "retry" and 0 < s.fail_first <= s.max_retries)
    conn.hset(f"rq:job:{retry.id}", "retries_left", str(retry.max_retries))  # as if no retry was consumed
    stranded = _pick(specs, conn, "boom", "failed", used)
    conn.hset(f"rq:job:{stranded}", "status", "started")
    conn.zrem("rq:failed:" + conn.hget(f"rq:job:{stranded}", "origin").decode(), stranded)
    conn.zadd("rq:wip:chaos", {f"{stranded}:deadbeef": time.time() + 60})

    v = _check(conn, specs, ledger)
    found = {(p.category, p.job) for p in v.problems}
    expected = {
        ("lost", lost), ("state", requeued), ("overrun", twice), ("results", duplicate),
        ("retries", retry.id), ("stranded", stranded),
    }
    assert expected <= found, "\n".join(map(str, v.problems))
    assert {p.job for p in v.problems} == {lost, requeued, twice, duplicate, retry.id, stranded}


def test_a_rerun_is_allowed_only_for_a_run_cut_by_a_crash(
    sync_redis: redis.Redis, stock_run: tuple[list[JobSpec], Path]
) -> None:
    specs, ledger = stock_run
    job = _pick(specs, sync_redis, "ok", "finished", set())
    with ledger.open("a") as f:  # the first run had begun, its worker was SIGKILLed, it ran again
        f.write(f"B {job} cut-by-crash 1 {time.time():.6f}\n")
    assert {p.category for p in _check(sync_redis, specs, ledger).problems if p.job == job} == {"overrun"}
    facts = Facts()
    facts.crash_inflight[job] = 1
    v = _check(sync_redis, specs, ledger, facts)
    assert v.problems == [], "\n".join(map(str, v.problems))
    assert v.rerun_after_crash == 1


def _start(conn: redis.Redis, queue: Queue, name: str) -> Job:
    """A stock worker ``name`` dequeues and starts one job (docs/rq-protocol.md §6.1) and is never heard of again."""
    worker = SimpleWorker([queue], connection=conn, name=name)
    worker.register_birth()
    result = worker.dequeue_job_and_maintain_ttl(None)
    assert result is not None
    job, _ = result
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    return job


def test_recovery_fails_only_what_dead_workers_owned(sync_redis: redis.Redis) -> None:
    conn = sync_redis
    q = Queue("chaos", connection=conn)
    q.enqueue("tests.chaos.jobs.sync_work", key="a", seconds=0, job_id="dead-one")
    q.enqueue("tests.chaos.jobs.sync_work", key="b", seconds=0, job_id="live-one")
    dead = _start(conn, q, "gone")
    live = _start(conn, q, "alive")
    # The live worker has not heart-beaten since: its deadline is not past the dead one's.  Stock writes
    # whole seconds (now + TTL), so two starts a second boundary apart differ by one (seen once in CI,
    # the live one then no blocker): give both the same deadline, as two starts in one second have.
    (dead_member,) = [m for m in conn.zrange("rq:wip:chaos", 0, -1) if m.startswith(b"dead-one:")]
    (live_member,) = [m for m in conn.zrange("rq:wip:chaos", 0, -1) if m.startswith(b"live-one:")]
    conn.zadd("rq:wip:chaos", {live_member: conn.zscore("rq:wip:chaos", dead_member) or 0}, xx=True)
    done = recover_abandoned(conn, {"gone"}, settle=0.3)
    assert (done.cleaned, done.deferred) == (0, 1)
    assert dead.get_status(refresh=True) == "started" and live.get_status(refresh=True) == "started"
    # Once it heart-beats, its deadline moves on and only the dead worker's job is recovered.
    member = next(m for m in conn.zrange("rq:wip:chaos", 0, -1) if m.startswith(b"live-one:"))
    conn.zadd("rq:wip:chaos", {member: time.time() + 1000}, xx=True)
    done = recover_abandoned(conn, {"gone"}, settle=0.3)
    assert (done.cleaned, done.deferred) == (1, 0)
    assert dead.get_status(refresh=True) == "failed"
    assert "AbandonedJobError" in (dead.latest_result().exc_string or "")
    assert live.get_status(refresh=True) == "started"


def test_final_recovery_fails_a_claim_its_live_worker_does_not_heartbeat(sync_redis: redis.Redis) -> None:
    """After the faults, an execution that its (live) worker's heartbeats leave out is run by nobody:
    RQ would fail it at its deadline, so the final pass does, and names it; a heart-beaten one stays."""
    from rq.utils import utcformat

    conn = sync_redis
    q = Queue("chaos", connection=conn)
    q.enqueue("tests.chaos.jobs.sync_work", key="a", seconds=0, job_id="phantom")
    q.enqueue("tests.chaos.jobs.sync_work", key="b", seconds=0, job_id="running")
    phantom = _start(conn, q, "alive")
    running = _start(conn, q, "alive-too")
    member = next(m for m in conn.zrange("rq:wip:chaos", 0, -1) if m.startswith(b"running:"))
    stop = threading.Event()

    def heartbeats() -> None:  # both workers beat; only "running" is refreshed, as a real heartbeat does
        score = time.time() + 300
        while not stop.wait(0.3):
            score += 1
            stamp = utcformat(datetime.now(UTC))
            conn.hset("rq:worker:alive", "last_heartbeat", stamp)
            conn.hset("rq:worker:alive-too", "last_heartbeat", stamp)
            conn.zadd("rq:wip:chaos", {member: score}, xx=True)

    beater = threading.Thread(target=heartbeats, daemon=True)
    beater.start()
    try:
        done = recover_abandoned(conn, set(), settle=5.0, final=True, patience=20.0, stale_after=2.0)
    finally:
        stop.set()
        beater.join()
    assert [e.job_id for e in done.unowned] == ["phantom"]
    assert phantom.get_status(refresh=True) == "failed"
    assert running.get_status(refresh=True) == "started"


@pytest.mark.timeout(300)
def test_a_short_sigkill_scenario_end_to_end(redis_url: str, tmp_path: Path) -> None:
    """Real asyncjobs and stock worker processes, SIGKILLs, RQ's recovery, the slot probe, the checker."""
    row = run_scenario(
        SCENARIOS["sigkill"], tmp_path, redis_url + "?socket_timeout=5", seed=11, jobs=300, produce_seconds=3,
        say=lambda _: None,
    )
    assert row.faults.get("sigkill", 0) >= 1, row.faults
    assert row.jobs > 300  # the plan plus the slot probe
    assert row.verdict == "pass", "\n".join(row.problem_samples) + f"\nlogs: {row.run_dir}"


@pytest.mark.skipif("ratelimit" not in SCENARIOS, reason="RateLimit is RQ 3's (RQ 2.12 is installed)")
def test_a_short_ratelimit_scenario_end_to_end(redis_url: str, tmp_path: Path) -> None:
    """RQ 3 rate-limited jobs under SIGKILLs and stop commands: every job ends, every limiter empties."""
    row = run_scenario(
        SCENARIOS["ratelimit"], tmp_path, redis_url + "?socket_timeout=5", seed=5, jobs=300, produce_seconds=3,
        say=lambda _: None,
    )
    assert row.faults.get("sigkill", 0) >= 1, row.faults
    assert row.verdict == "pass", "\n".join(row.problem_samples) + f"\nlogs: {row.run_dir}"
