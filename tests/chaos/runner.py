"""One scenario from start to verdict.

1. A fresh private Redis (AOF on where the scenario restarts it), two asyncjobs workers
   (``--concurrency 16``, job monitoring every 1 s) and a stock ``rq worker`` (forking,
   sharing the ``chaos`` queue).
2. The producer enqueues the plan at a steady rate while the scenario's fault thread runs.
3. Once everything is enqueued and the queues have emptied, faults stop; a worker is
   running in every slot again; RQ's abandoned-job cleanup runs for the dead workers.
4. Drain: wait until every job is terminal (the time this takes is *time to recover*),
   giving up after 30 s without progress.  Ids stuck in an intermediate list get RQ's
   intermediate-list maintenance (two passes 60 s apart, as stock).
5. Slot probe: ``concurrency`` probe jobs per asyncjobs worker that only finish once all
   run at the same time, so a leaked slot or a dead pool thread makes them fail.
6. Every asyncjobs worker must report itself idle; then all workers get a warm SIGTERM
   and must exit 0.
7. The checker compares Redis (through RQ's own data) with the plan, the ledger and
   the faults the run recorded.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.chaos import faults as F
from tests.chaos import ledger as ledger_mod
from tests.chaos.checker import TERMINAL, Problem, Verdict, check
from tests.chaos.cluster import Cluster
from tests.chaos.plan import DEFAULT_MIX, Plan, Producer, enqueue, make_plan, probe_plan
from tests.chaos.recovery import clean_intermediate, intermediate_ids, read_wip

RQ_MAJOR = int(__import__("rq").__version__.split(".", 1)[0])

NO_PROGRESS = 30.0  # drain gives up after this long without a job reaching a terminal state


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    inject: Callable[[F.Ctx], None] | None
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    aof: bool = False
    via_proxy: bool = False
    poison: bool = False
    hostile: bool = False  # the poison entries are issue 18's hostile payloads and self-ending jobs
    long_seconds: float = 3.0  # duration of ``long`` jobs
    rate_limits: dict[str, int] | None = None  # RQ 3: most jobs get one of these RateLimit(key, concurrency)
    worker_args: tuple[str, ...] = ()  # extra asyncjobs-worker flags
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment of every worker
    min_recycles: int = 0  # the scenario fails unless the workers recycled (exit 75) at least this often
    workers: int = 2  # asyncjobs worker processes
    cron: bool = False  # the workers run tests/chaos/cron_config.py: every tick must be enqueued exactly once
    queue_limits: bool = False  # fleet-wide limits on chaos-high (faults.LIMIT_*): never exceeded, no slot leaked


STORM_MIX = {"ok": 0.55, "boom": 0.05, "timeout": 0.12, "long": 0.08, "child": 0.05, "cancel": 0.15}
RATE_LIMIT_MIX = {"ok": 0.6, "retry": 0.15, "boom": 0.05, "timeout": 0.04, "long": 0.06, "child": 0.1}
#: Concurrency limits of the ratelimit scenario (each shared by about a quarter of the jobs).
RATE_LIMITS = {"rl-two": 2, "rl-four": 4, "rl-eight": 8}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("sigkill", "SIGKILL of asyncjobs workers at random moments, restarts, RQ's abandoned-job cleanup", F.sigkill),
        Scenario("redis-restart", "Redis (AOF on) stopped and restarted mid-run", F.redis_restart, aof=True),
        Scenario("proxy", "fault proxy: replies delayed past the socket timeout, dropped; connections cut; blackouts", F.proxy, via_proxy=True),
        Scenario("storms", "storms of stop-job, kill-horse, Job.cancel and job timeouts", F.storms, mix=STORM_MIX,
                 long_seconds=15.0),
        Scenario("poison", "poison queue entries between good jobs (non-hash keys, missing/empty hashes, bad data/function/fields)", None, poison=True),
        Scenario("hostile", "hostile entries between good jobs (a 200,000-deep tuple, int(Decimal('1e1000000')), "
                 "list(IPv4Network), BUILD on an allowed function, sys.exit and KeyboardInterrupt in jobs) under "
                 "--allow-module: each fails alone, no worker crash", None, poison=True, hostile=True,
                 worker_args=("--allow-module", "tests.chaos.jobs")),
        Scenario("sigterm", "repeated warm and cold SIGTERM/SIGINT, SIGTERM during start-up and while Redis is unreachable", F.sigterm),
        Scenario("recycle", "--max-memory recycling under load: every job leaks 512 KB; workers drain, exit 75 and "
                 "are replaced", None, worker_args=("--max-memory", "160"), worker_env={"CHAOS_LEAK_KB": "512"},
                 min_recycles=2),
        Scenario("cron", "three --cron workers (a tick a second), the cron leader SIGKILLed every 2-4 s: every tick "
                 "enqueued exactly once", F.cron_leader, workers=3, cron=True,
                 worker_args=("--cron", "tests.chaos.cron_config", "--cron-lease", "2")),
        Scenario("queuelimits", "fleet-wide queue limits (concurrency 4, 30/s, short pauses) on chaos-high under "
                 "SIGKILLs and proxy faults: never exceeded, no slot leaked", F.queuelimits, via_proxy=True,
                 queue_limits=True),
        *([Scenario("ratelimit", "RQ 3 RateLimit jobs under SIGKILLs, stop-job and stop-execution: every slot is given back",
                    F.ratelimit, mix=RATE_LIMIT_MIX, long_seconds=15.0, rate_limits=RATE_LIMITS)]
          if RQ_MAJOR >= 3 else []),
    ]
}


@dataclass
class Row:
    scenario: str
    seed: int
    jobs: int
    faults: dict[str, int]
    lost: int
    stranded: int
    overrun: int
    reruns_within_crash_bound: int
    failed_by_maintenance: int
    worker_restarts: int
    stock_exits: int  # stock `rq worker` exits by design when Redis is unreachable; restarted
    recover_s: float
    duration_s: float
    problems: int
    verdict: str
    terminal: dict[str, int]
    problem_samples: list[str]
    rq_problems: list[str]  # RQ's own behaviour (stock worker, RQ's TTLs): reported, not asyncjobs' verdict
    run_dir: str | None
    notes: list[str]

    @property
    def faults_total(self) -> int:
        # proxy-* are the proxy's own counts of faults applied (delayed, dropped, cut); armed-* are
        # one-shots the scenario asked for, counted by the proxy once they fire.
        return sum(v for k, v in self.faults.items() if not k.startswith(("abandoned", "armed-")))

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["faults_total"] = self.faults_total
        return d


def run_scenario(
    sc: Scenario, base_dir: Path, side_url: str, *, seed: int, jobs: int, produce_seconds: float,
    say: Callable[[str], None] = print, keep: bool = False,
) -> Row:
    rng = random.Random(seed)
    tag = f"{sc.name.replace('-', '')}{seed}"
    run_dir = base_dir / f"{sc.name}-{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cluster = Cluster(run_dir, tag, side_url, aof=sc.aof, via_proxy=sc.via_proxy, worker_args=sc.worker_args,
                      worker_env=sc.worker_env, workers=sc.workers)
    ctx = F.Ctx(cluster, rng, tag)
    if sc.queue_limits:  # set before any worker starts: a worker obeys a new limit only within a second
        from asyncjobs.limits import QueueControl, Rate

        cluster.on_redis_up = lambda c: QueueControl(c).limit(
            F.LIMITED_QUEUE, concurrency=F.LIMIT_CONCURRENCY, rate=Rate(*F.LIMIT_RATE))
    t0 = time.monotonic()
    extra_problems: list[Problem] = []
    plan = make_plan(tag, jobs, rng, sc.mix, long_seconds=sc.long_seconds, rate_limits=sc.rate_limits)
    ctx.kinds = {s.id: s.kind for s in plan.specs}
    producer_conn: redis.Redis | None = None
    try:
        cluster.start()
        cluster.wait_registered(cluster.all_current())
        conn = cluster.conn()
        producer_conn = redis.Redis.from_url(cluster.redis.url, socket_timeout=30)
        hook = F.poison_hook(ctx, producer_conn, sc.hostile) if sc.poison else None
        producer = Producer(
            producer_conn, plan, cluster.redis_lock, seconds=produce_seconds, between_batches=hook,
            batch=6 if sc.poison else 25,  # poison: bad entries densely interleaved with good ones
        )
        injector = threading.Thread(target=_guard(sc.inject, ctx, extra_problems), name="chaos-faults", daemon=True)
        say(f"  {sc.name}: {jobs} jobs over {produce_seconds:g}s, seed {seed}, logs in {run_dir}")
        producer.start()
        if sc.inject is not None:
            injector.start()
        producer.join()
        if producer.error is not None:
            raise RuntimeError(f"the producer failed: {producer.error!r}") from producer.error
        _wait_backlog(cluster, plan, limit=max(30.0, produce_seconds), rate_limits=sc.rate_limits)
        ctx.stop.set()
        if sc.inject is not None:
            injector.join(120)
            if injector.is_alive():
                raise RuntimeError("the fault injector did not stop within 120 s")
        t_faults_end = time.monotonic()
        # ---- heal: every slot runs a registered worker, the dead are recovered
        cluster.wait_registered(cluster.all_current(), timeout=60)
        t_final = time.monotonic()
        ctx.recover(settle=5.0, final=True)
        ctx.note(f"final recovery took {time.monotonic() - t_final:.1f}s")
        drained, stuck = _drain(ctx, plan, say)
        ctx.note(f"drained {time.monotonic() - t_faults_end:.1f}s after the faults ended")
        recover_s = time.monotonic() - t_faults_end
        if not drained:
            extra_problems.append(Problem("drain", None, f"jobs still not terminal {NO_PROGRESS:.0f}s after the last progress"))
        if sc.rate_limits:
            extra_problems += _limiters_empty(conn, sc.rate_limits)
        if sc.queue_limits:
            extra_problems += _queue_limits_kept(conn, ctx)
        if stuck:
            ctx.note(f"{stuck} id(s) were stuck in an intermediate list; RQ's maintenance failed them")
        # ---- slots back to idle, usable all at once
        extra_problems += _probe(ctx, plan, side_url)
        extra_problems += _idle(cluster)
        extra_problems += [Problem("worker", None, p) for p in cluster.stop_all(timeout=cluster.shutdown_timeout + 30)]
        for note in cluster.notes:
            ctx.note(note)
        if sc.cron:
            extra_problems += _cron_ticks(conn, ctx)
        if cluster.recycles:
            ctx.faults["recycle"] = cluster.recycles
        if sc.min_recycles:
            extra_problems += _recycle_rss(cluster, sc, ctx)
        if cluster.recycles < sc.min_recycles:
            extra_problems.append(Problem("recycle", None, f"{cluster.recycles} recycles, expected at least "
                                                         f"{sc.min_recycles}: the scenario did not exercise recycling"))
        for crash in cluster.crashes:
            extra_problems.append(Problem("worker", None, crash))
        ctx.facts.asyncjobs_pids = {i.pid for i in cluster.incarnations if i.kind == "asyncjobs"}
        ctx.facts.stock_names = {i.name for i in cluster.incarnations if i.kind == "stock"}
        verdict: Verdict = check(conn, plan.specs, ledger_mod.read(cluster.ledger_path), ctx.facts)
    finally:
        ctx.stop.set()
        if producer_conn is not None:
            producer_conn.close()
        cluster.close()
    problems = extra_problems + ctx.problems + verdict.problems
    passed = not problems
    samples = [str(p) for p in problems[:25]]
    row = Row(
        scenario=sc.name, seed=seed, jobs=len(plan.specs),
        faults=dict(sorted(ctx.faults.items())),
        lost=verdict.count("lost"), stranded=verdict.count("stranded"),
        overrun=verdict.count("overrun"), reruns_within_crash_bound=verdict.rerun_after_crash,
        failed_by_maintenance=verdict.failed_by_maintenance, worker_restarts=ctx.restarts + len(cluster.crashes) + cluster.stock_exits,
        stock_exits=cluster.stock_exits,
        recover_s=round(recover_s, 2), duration_s=round(time.monotonic() - t0, 1),
        problems=len(problems), verdict="pass" if passed else "FAIL",
        terminal=dict(sorted(verdict.terminal.items())), problem_samples=samples,
        rq_problems=[str(p) for p in verdict.rq_problems[:25]],
        run_dir=None if passed and not keep else str(run_dir), notes=ctx.log[-50:],
    )
    if not passed or keep:
        (run_dir / "problems.txt").write_text("\n".join(str(p) for p in problems) + "\n")
        (run_dir / "events.txt").write_text("\n".join(ctx.log) + "\n")
        (run_dir / "plan.json").write_text(json.dumps([s.to_json() for s in plan.specs], indent=0))
        (run_dir / "rq-problems.txt").write_text("\n".join(str(p) for p in verdict.rq_problems) + "\n")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def _guard(inject: Callable[[F.Ctx], None] | None, ctx: F.Ctx, problems: list[Problem]) -> Callable[[], None]:
    def run() -> None:
        if inject is None:
            return
        try:
            inject(ctx)
        except BaseException as exc:  # the harness failed, not the worker: say so loudly
            import traceback

            problems.append(Problem("harness", None, f"fault injector crashed: {''.join(traceback.format_exception(exc))}"))

    return run


def _cron_ticks(conn: redis.Redis, ctx: F.Ctx) -> list[Problem]:
    """Every tick of the cron scenario's one-second job enqueued exactly once: the scheduled times form
    a one-second grid from the first to the last, with no tick twice and none missing (a tick missed
    while no worker led must have been enqueued late by the next leader)."""
    from datetime import datetime

    from rq import Queue

    from tests.chaos.cron_config import CRON_QUEUE

    ticks = sorted(round(datetime.fromisoformat(j.meta["cron_scheduled_at"]).timestamp() * 1000)
                   for j in Queue(CRON_QUEUE, connection=conn).get_jobs())
    takeovers = ctx.facts.cron_takeovers
    ctx.note(f"cron: {len(ticks)} ticks; takeovers after SIGKILL: {', '.join(f'{t:.2f}s' for t in takeovers)}")
    problems = []
    if len(ticks) < 5:
        problems.append(Problem("cron", None, f"only {len(ticks)} cron ticks enqueued"))
    dupes = len(ticks) - len(set(ticks))
    if dupes:
        problems.append(Problem("cron", None, f"{dupes} cron ticks enqueued twice"))
    missing = [t for t in range(ticks[0], ticks[-1] + 1, 1000) if t not in set(ticks)] if ticks else []
    if missing:
        problems.append(Problem("cron", None, f"{len(missing)} cron ticks never enqueued, e.g. {missing[:5]}"))
    if takeovers and max(takeovers) > 2 * 2.0 + 3:
        problems.append(Problem("cron", None, f"a takeover took {max(takeovers):.2f}s (lease 2 s: a dead leader is replaced within it)"))
    return problems


def _recycle_rss(cluster: Cluster, sc: Scenario, ctx: F.Ctx) -> list[Problem]:
    """The RSS each recycling worker logged stays near ``--max-memory``: over it by at most what the jobs
    claimed since the previous check leaked (``concurrency`` x the leak per job), plus a margin."""
    import re

    limit_mb = float(sc.worker_args[sc.worker_args.index("--max-memory") + 1])
    leak_mb = int(sc.worker_env.get("CHAOS_LEAK_KB", "0")) / 1024
    bound = limit_mb + cluster.concurrency * leak_mb + 8
    seen = [float(m.group(1)) for inc in cluster.incarnations if inc.kind == "asyncjobs"
            for m in re.finditer(r"memory ([0-9.]+) MB is over --max-memory", inc.log.read_text(errors="replace"))]
    ctx.note(f"recycle: {len(seen)} recycles logged, RSS at recycle max {max(seen, default=0):.1f} MB (bound {bound:.0f})")
    if seen and max(seen) > bound:
        return [Problem("recycle", None, f"a worker recycled at {max(seen):.1f} MB RSS, over the bound {bound:.0f} MB")]
    return []


def _settled(conn: redis.Redis, plan: Plan) -> int:
    """Jobs in a terminal state, counting a child RQ left deferred because its parent failed."""
    by_id = {s.id: s for s in plan.specs}
    ids = [s.id for s in plan.specs]
    status = dict(zip(ids, _statuses(conn, ids), strict=True))
    done = 0
    for jid, st in status.items():
        parent = by_id[jid].parent
        if st in TERMINAL or (st == "deferred" and parent is not None and status.get(parent) in ("failed", "stopped", "canceled")):
            done += 1
    return done


def _statuses(conn: redis.Redis, ids: list[str]) -> list[str | None]:
    pipe = conn.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(f"rq:job:{jid}", "status")
    return [s.decode() if s else None for s in pipe.execute()]


def _wait_backlog(cluster: Cluster, plan: Plan, limit: float, rate_limits: dict[str, int] | None = None) -> None:
    """Keep the faults going until the queues have emptied (or ``limit`` passes); rate-limited jobs
    waiting for a slot are on no queue, but are backlog too."""
    conn = cluster.conn()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with cluster.redis_lock:
            try:
                backlog = sum(conn.llen(f"rq:queue:{q}") for q in ("chaos-high", "chaos"))
                backlog += sum(conn.zcard(f"rq:rl:{k}:rate_limited") for k in rate_limits or ())
            except redis.ConnectionError:
                backlog = 1
        if backlog == 0:
            return
        time.sleep(0.2)


def _drain(ctx: F.Ctx, plan: Plan, say: Callable[[str], None]) -> tuple[bool, int]:
    """Wait until every planned job is settled; returns (drained, ids failed out of an intermediate list)."""
    conn = ctx.cluster.conn()
    ids = [s.id for s in plan.specs]
    best, last_progress = -1, time.monotonic()
    stuck_total = 0
    seen_stuck: dict[tuple[str, str], float] = {}  # (queue, id) -> when first seen stuck
    while True:
        done = _settled(conn, plan)
        if done == len(ids):
            return True, stuck_total
        if done > best:
            best, last_progress = done, time.monotonic()
        ctx.recover(settle=2.0)
        # Ids in an intermediate list that no execution owns, for jobs not yet ended, that stay
        # there: stuck (a worker died, or lost the reply, between BLMOVE and its start write).
        # RQ's maintenance (docs/rq-protocol.md §10.3) fails them once it has seen them for 60 s.
        owned = {e.job_id for e in read_wip(conn)}
        candidates = [(q, j) for q, j in intermediate_ids(conn) if j not in owned and j not in ctx.facts.left_in_intermediate]
        status = dict(zip([j for _, j in candidates], _statuses(conn, [j for _, j in candidates]), strict=True))
        now = time.monotonic()
        stuck = [(q, j) for q, j in candidates if status.get(j) not in TERMINAL]
        seen_stuck = {k: seen_stuck.get(k, now) for k in stuck}
        settled = [k for k, t in seen_stuck.items() if now - t > 5.0]
        if settled:
            if any(k not in ctx.stuck_reported for k in settled):
                say(f"    {len(settled)} id(s) stuck in an intermediate list: RQ's maintenance fails them after 60 s")
                ctx.stuck_reported.update(settled)
            stuck_total += clean_intermediate(conn, settled, f"{ctx.tag}-maintenance")
            last_progress = now  # waiting for RQ's 60 s is progress
        if now - last_progress > NO_PROGRESS:
            return False, stuck_total
        time.sleep(0.5)


def _probe(ctx: F.Ctx, plan: Plan, side_url: str) -> list[Problem]:
    """concurrency x workers probe jobs on the priority queue (the stock worker does not take it)."""
    cl = ctx.cluster
    workers = cl.asyncjobs_workers()
    n = cl.concurrency * len(workers)
    barrier = f"{ctx.tag}:probe-barrier"
    side = redis.Redis.from_url(side_url)
    side.delete(barrier)
    side.close()
    probes = probe_plan(f"{ctx.tag}probe", n, barrier)
    enqueue(cl.conn(), probes.specs)
    plan.specs.extend(probes.specs)
    ids = [s.id for s in probes.specs]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(s in TERMINAL for s in _statuses(cl.conn(), ids)):
            return []
        time.sleep(0.2)
    return [Problem("slots", None, f"{n} probe jobs did not all end within 120 s")]


def _limiters_empty(conn: redis.Redis, limits: dict[str, int]) -> list[Problem]:
    """Every job has ended: no slot may still be held (``allowed``) and no job may still wait."""
    problems = []
    for key in limits:
        allowed = [j.decode() for j in conn.zrange(f"rq:rl:{key}:allowed", 0, -1)]
        waiting = [j.decode() for j in conn.zrange(f"rq:rl:{key}:rate_limited", 0, -1)]
        if allowed or waiting:
            problems.append(Problem(
                "ratelimit", None, f"rate limit {key!r} after the run: slots held by {allowed[:10]}, waiting {waiting[:10]}"
            ))
    return problems


def _queue_limits_kept(conn: redis.Redis, ctx: F.Ctx) -> list[Problem]:
    """The queuelimits scenario: the limits were never exceeded, and once every job has ended no lease
    is left (a leaked slot would hold the queue back for ever); then the limits are cleared for the probe."""
    from asyncjobs.limits import QueueControl

    problems = []
    ctx.note(f"queue limits: at most {ctx.limit_peak} running (limit {F.LIMIT_CONCURRENCY}), at most "
             f"{ctx.rate_peak} starts per period (limit {F.LIMIT_RATE[0]})")
    if ctx.limit_peak > F.LIMIT_CONCURRENCY:
        problems.append(Problem("limits", None, f"{ctx.limit_peak} jobs of {F.LIMITED_QUEUE} ran at once "
                                                f"(limit {F.LIMIT_CONCURRENCY})"))
    if ctx.rate_peak > F.LIMIT_RATE[0]:
        problems.append(Problem("limits", None, f"{ctx.rate_peak} starts of {F.LIMITED_QUEUE} in one period "
                                                f"(limit {F.LIMIT_RATE[0]})"))
    if ctx.limit_peak == 0:
        problems.append(Problem("limits", None, "no job of the limited queue was ever seen running"))
    sec, usec = conn.time()
    leases = conn.zrangebyscore(f"rq:wip:{F.LIMITED_QUEUE}", sec + usec / 1e6, "+inf")
    if leases:
        problems.append(Problem("limits", None, f"slots still held after every job ended: {leases[:10]}"))
    control = QueueControl(conn)
    control.clear(F.LIMITED_QUEUE)
    control.resume(F.LIMITED_QUEUE)
    return problems


def _idle(cluster: Cluster) -> list[Problem]:
    conn = cluster.conn()
    problems = []
    for inc in cluster.asyncjobs_workers():
        key = f"rq:worker:{inc.name}"
        deadline = time.monotonic() + 10
        while True:
            state, current = conn.hmget(key, ["state", "current_job"])
            if state == b"idle" and not current:
                break
            if time.monotonic() > deadline:
                problems.append(Problem("slots", None, f"{inc.name} is not idle after the run: state={state!r} current_job={current!r}"))
                break
            time.sleep(0.1)
    return problems
