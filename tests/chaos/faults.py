"""Fault injectors.  Each runs in its own thread until ``ctx.stop`` is set, paced by ``ctx.stop.wait``
(the pace of the faults, never a way to wait for an outcome), and records what it did in ``ctx``."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis
from rq.command import send_kill_horse_command, send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from tests.chaos import ledger as ledger_mod
from tests.chaos.checker import Facts, Problem
from tests.chaos.cluster import QUEUES, SOCKET_TIMEOUT, Cluster, Incarnation
from tests.chaos.recovery import inflight_of, intermediate_ids, read_wip, recover_abandoned

POISON_QUEUE = QUEUES[0]


@dataclass
class Ctx:
    cluster: Cluster
    rng: random.Random
    tag: str
    stop: threading.Event = field(default_factory=threading.Event)
    facts: Facts = field(default_factory=Facts)
    faults: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    restarts: int = 0
    kinds: dict[str, str] = field(default_factory=dict)  # job id -> kind
    log: list[str] = field(default_factory=list)
    dead: set[str] = field(default_factory=set)  # workers whose in-flight executions are recorded
    stuck_reported: set[tuple[str, str]] = field(default_factory=set)
    limit_peak: int = 0  # queuelimits: most jobs of the limited queue seen holding a live lease at once
    rate_peak: int = 0  # queuelimits: most starts of the limited queue seen in one rate period

    def note(self, text: str) -> None:
        self.log.append(f"{time.time():.3f} {text}")

    # ------------------------------------------------------------ shared steps
    def sigkill(self, inc: Incarnation) -> None:
        """SIGKILL a worker, then record what it had in flight (its executions still in rq:wip)."""
        self.cluster.kill(inc)
        jobs = self.left_behind(inc.name)
        self.facts.crash_inflight.update(jobs)
        self.dead.add(inc.name)
        self.faults["sigkill"] += 1
        self.note(f"SIGKILL {inc.name} pid {inc.pid}: {len(jobs)} execution(s) in flight")

    def settle_dead(self) -> None:
        """Record what workers that exited on their own had in flight, once nothing of theirs runs:
        a stock worker's orphaned work-horse may still finish its job (we wait for it, bounded)."""
        cl = self.cluster
        while cl.pending_dead:
            inc = cl.pending_dead.pop(0)
            orphans = cl.orphans()
            _, alive = psutil.wait_procs(orphans, timeout=30)
            for proc in alive:  # a horse that outlives its worker by 30 s: end it as the crash would
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=10)
            jobs = self.left_behind(inc.name)
            self.facts.crash_inflight.update(jobs)
            dequeued: list[str] = []
            if inc.kind == "stock":
                # Stock's horse takes a BLMOVEd id out of the intermediate list when it starts the
                # job: a stock worker that died before that leaves it there, where RQ's maintenance
                # fails it a minute later (if not started) or leaves it for good.  Died between its
                # BLMOVE and the start write, the job is in no registry yet: RQ's maintenance then
                # runs handle_job_failure on it, which consumes a retry no run used (RQ's own
                # behaviour; asyncjobs never leaves an id there), so it counts as cut by the crash.
                self.facts.intermediate_failures_allowed = True
                inter = {j for _, j in intermediate_ids(cl.conn())}
                self.facts.left_in_intermediate.update(j for j in jobs if j in inter)
                dequeued = sorted(inter - set(jobs))
                self.facts.left_in_intermediate.update(dequeued)
                self.facts.crash_inflight.update(dequeued)
            self.dead.add(inc.name)
            self.note(
                f"{inc.kind} worker {inc.name} exited on its own (code {inc.returncode}): {len(jobs)} execution(s) "
                f"in flight" + (f", {len(dequeued)} id(s) dequeued but not started {dequeued}" if dequeued else "")
            )

    def left_behind(self, name: str) -> list[str]:
        """Jobs whose execution the dead worker ``name`` still owns in rq:wip (read after its death);
        their execution records are left for RQ to expire (docs/rq-protocol.md §10.2)."""
        mine = [e for e in read_wip(self.cluster.conn()) if e.owner == name]
        self.facts.abandoned_executions.update((e.job_id, e.execution_id) for e in mine)
        return [e.job_id for e in mine]

    def restart(self, slot: str) -> Incarnation:
        inc = self.cluster.spawn(slot)
        self.restarts += 1
        return inc

    def recover(self, settle: float = 5.0, *, final: bool = False) -> None:
        """RQ's abandoned-job cleanup for executions of dead workers (see recovery.py); ``final``
        also for executions nobody heart-beats (claims that no task runs)."""
        self.settle_dead()
        try:
            stock = {i.name for i in self.cluster.incarnations if i.kind == "stock"}
            done = recover_abandoned(self.cluster.conn(), self.dead, settle, final=final, one_job_workers=stock)
        except ValueError as exc:
            # RQ's cleanup fetches each expired job; one with a malformed field raises and stops
            # the whole pass (every maintenance run, `rq info` too) while it stays in rq:wip.
            if not any(p.category == "maintenance" for p in self.problems):
                self.problems.append(Problem(
                    "maintenance", None,
                    f"RQ's StartedJobRegistry.cleanup raised {exc!r}: a malformed job left in rq:wip "
                    "breaks RQ's maintenance for its queue",
                ))
            return
        for e in done.recovered:
            if (e.job_id, e.execution_id) not in self.facts.abandoned_executions:
                # Claimed by a worker already dead when its in-flight executions were read: a claim it
                # sent just before the SIGKILL that Redis ran later (held in the fault proxy).  Its
                # death cut the execution, as for those recorded at the kill.
                self.facts.abandoned_executions.add((e.job_id, e.execution_id))
                self.facts.crash_inflight[e.job_id] += 1
                self.note(f"{e.job_id}:{e.execution_id} claimed by {e.owner} after its death was recorded")
        for e in done.unowned:
            self.facts.unowned[e.job_id] = e.owner or "an unknown worker (execution record gone)"
            self.facts.abandoned_executions.add((e.job_id, e.execution_id))
            self.note(f"no one runs {e.job_id}:{e.execution_id} (owner {e.owner}, deadline {e.score:.0f}): failed as abandoned")
        if done.cleaned:
            self.faults["abandoned-recovered"] += done.cleaned
            self.note(f"abandoned-job cleanup: {done.cleaned} recovered ({len(done.unowned)} never heart-beaten), {done.deferred} deferred")


# ------------------------------------------------------------------ SIGKILL
def sigkill(ctx: Ctx) -> None:
    """SIGKILL a random asyncjobs worker at random moments (sometimes again during its start-up),
    restart it under a new name, then run RQ's abandoned-job cleanup for the dead."""
    rng = ctx.rng
    while not ctx.stop.wait(rng.uniform(0.3, 1.5)):
        victims = ctx.cluster.asyncjobs_workers()
        if not victims:
            continue
        inc = rng.choice(victims)
        ctx.sigkill(inc)
        new = ctx.restart(inc.slot)
        if rng.random() < 0.25:
            ctx.stop.wait(rng.uniform(0.0, 0.5))  # a kill during start-up (registration, first claim)
            ctx.sigkill(new)
            ctx.restart(inc.slot)
        ctx.recover(settle=0.0)  # what is not safely recoverable yet waits for a later pass


# ------------------------------------------------------------- Redis restart
def redis_restart(ctx: Ctx) -> None:
    """Stop Redis (SIGTERM: it fsyncs its AOF and exits), keep it down for a while, start it again
    on the same port and data directory.  The producer pauses while Redis is down."""
    rng = ctx.rng
    server = ctx.cluster.redis
    while not ctx.stop.wait(rng.uniform(2.0, 4.5)):
        down = rng.uniform(0.2, 2.5)
        with ctx.cluster.redis_lock:
            server.stop()
            time.sleep(down)  # the outage itself
            server.start()
        ctx.faults["redis-restart"] += 1
        ctx.note(f"Redis restarted after {down:.2f}s down")


# ------------------------------------------------------------------- proxy
def proxy(ctx: Ctx) -> None:
    """Random reply delays past the socket timeout, dropped replies and cut connections on every
    asyncjobs connection, plus targeted faults on the finish+claim script and short blackouts."""
    rng = ctx.rng
    px = ctx.cluster.proxy
    assert px is not None, "the proxy scenario needs via_proxy=True"
    slow = (SOCKET_TIMEOUT + 0.3, SOCKET_TIMEOUT + 1.5)
    px.chaos(seed=rng.randrange(1 << 30), p_delay=0.003, p_drop=0.003, p_cut=0.0015, delay=slow)
    try:
        while not ctx.stop.wait(rng.uniform(0.8, 2.5)):
            roll = rng.random()
            if roll < 0.35:
                px.cut_connections()
                ctx.faults["armed-cut-all"] += 1
            elif roll < 0.55:
                px.blackhole(True)
                ctx.stop.wait(rng.uniform(0.5, 2.5))  # Redis unreachable for a while
                px.blackhole(False)
                ctx.faults["blackhole"] += 1
            elif roll < 0.8:
                px.delay_next_reply(b"EVALSHA", rng.uniform(*slow))
                ctx.faults["armed-delay-script-reply"] += 1
            else:
                px.drop_next_reply(b"EVALSHA")
                ctx.faults["armed-drop-script-reply"] += 1
    finally:
        px.calm()
        px.blackhole(False)
        ctx.faults.update({f"proxy-{k}": v for k, v in px.stats.items()})


# ------------------------------------------------------------------- storms
def storms(ctx: Ctx) -> None:
    """stop-job for every ``long`` job as soon as the ledger shows it running (and again, and for
    jobs not running), kill-horse on random workers (asyncjobs and stock) and Job.cancel() on
    queued ``cancel`` jobs; job timeouts come from the plan's ``timeout`` jobs."""
    rng = ctx.rng
    conn = ctx.cluster.conn()
    tail = ledger_mod.Tail(ctx.cluster.ledger_path)
    next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
    while not ctx.stop.wait(rng.uniform(0.02, 0.06)):
        running = tail.poll()
        for jid in [j for j in running if ctx.kinds.get(j) == "long" and j not in ctx.facts.stop_sent]:
            at = time.time()
            try:
                send_stop_job_command(conn, jid)
            except (InvalidJobOperation, NoSuchJobError):
                continue
            ctx.facts.stop_sent[jid] = at
            ctx.faults["stop-job"] += 1
        if rng.random() < 0.2 and ctx.facts.stop_sent:  # again: a second stop must be harmless
            with contextlib.suppress(InvalidJobOperation, NoSuchJobError):  # stock clears worker_name
                send_stop_job_command(conn, rng.choice(list(ctx.facts.stop_sent)))
                ctx.faults["stop-job-again"] += 1
        ids = [j.decode() for j in conn.lrange(f"rq:queue:{POISON_QUEUE}", 0, 200)]
        targets = [j for j in ids if ctx.kinds.get(j) == "cancel" and j not in ctx.facts.canceled]
        if targets and rng.random() < 0.5 and _cancel_if_queued(conn, rng.choice(targets), ctx):
            ctx.faults["cancel"] += 1
        if time.monotonic() >= next_kill:
            next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
            live = ctx.cluster.all_current()
            if live:
                inc = rng.choice(live)
                ctx.facts.kill_horse_to.add(inc.name)
                send_kill_horse_command(conn, inc.name)
                ctx.faults["kill-horse"] += 1


# --------------------------------------------------------------- rate limits
def ratelimit(ctx: Ctx) -> None:
    """RQ 3 rate-limited jobs (most of the plan): SIGKILL a random asyncjobs worker every 1-2.5 s
    (restart, RQ's abandoned-job cleanup, which gives the dead worker's slots back), and stop every
    ``long`` job as soon as it runs, half with stop-job, half with RQ 3's stop-execution."""
    from rq.command import send_stop_execution_command

    rng = ctx.rng
    conn = ctx.cluster.conn()
    tail = ledger_mod.Tail(ctx.cluster.ledger_path)
    next_kill = time.monotonic() + rng.uniform(1.0, 2.5)
    while not ctx.stop.wait(rng.uniform(0.02, 0.06)):
        running = tail.poll()
        for jid in [j for j in running if ctx.kinds.get(j) == "long" and j not in ctx.facts.stop_sent]:
            at = time.time()
            eids = [e.execution_id for e in read_wip(conn) if e.job_id == jid]
            try:
                if eids and rng.random() < 0.5:
                    send_stop_execution_command(conn, jid, eids[0])
                    ctx.faults["stop-execution"] += 1
                else:
                    send_stop_job_command(conn, jid)
                    ctx.faults["stop-job"] += 1
            except (InvalidJobOperation, NoSuchJobError):
                continue
            ctx.facts.stop_sent[jid] = at
        next_kill = _kill_one_when_due(ctx, rng, next_kill)



def _kill_one_when_due(ctx: Ctx, rng: random.Random, next_kill: float) -> float:
    """Once ``next_kill`` (monotonic) has come: SIGKILL a random asyncjobs worker, restart its slot and
    run the abandoned-job recovery; the time of the next kill."""
    if time.monotonic() < next_kill:
        return next_kill
    victims = ctx.cluster.asyncjobs_workers()
    if victims:
        inc = rng.choice(victims)
        ctx.sigkill(inc)
        ctx.restart(inc.slot)
    ctx.recover(settle=0.0)
    return time.monotonic() + rng.uniform(1.0, 2.5)


def _cancel_if_queued(conn: redis.Redis, jid: str, ctx: Ctx) -> bool:
    """``Job.cancel()`` only while the job is still queued: WATCHed, so a worker claiming it first wins."""
    key = f"rq:job:{jid}"
    with conn.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.hget(key, "status") != b"queued":
                return False
            job = Job.fetch(jid, connection=conn)
            pipe.multi()
            ctx.facts.canceled.add(jid)  # before EXEC: a reply lost after EXEC must not hide the cancel
            job.cancel(pipeline=pipe)
            pipe.execute()
        except redis.WatchError:
            ctx.facts.canceled.discard(jid)
            return False
    return True


# ------------------------------------------------------------ warm/cold TERM
def sigterm(ctx: Ctx) -> None:
    """Repeated warm (one SIGTERM or SIGINT) and cold (two) shutdowns of random asyncjobs workers,
    SIGTERM during start-up, and SIGTERM while Redis is unreachable at start-up."""
    rng = ctx.rng
    cl = ctx.cluster
    # Workers whose Redis is unreachable at start-up, in the background: blackholed, then refused.
    unreachable = threading.Thread(
        target=lambda: [_unreachable_start(ctx, blackholed=b) for b in (True, False)], daemon=True
    )
    unreachable.start()
    while not ctx.stop.wait(rng.uniform(0.3, 1.5)):
        victims = cl.asyncjobs_workers()
        if not victims:
            continue
        inc = rng.choice(victims)
        mode = rng.choice(["warm", "cold", "cold", "startup"])
        if mode in ("warm", "cold"):
            _shutdown(ctx, inc, cold=mode == "cold")
            ctx.restart(inc.slot)
        else:
            _shutdown(ctx, inc, cold=False)
            new = ctx.restart(inc.slot)
            ctx.stop.wait(rng.uniform(0.0, 0.4))
            _term_at_startup(ctx, new, what="during start-up")
            ctx.restart(inc.slot)
    unreachable.join(60)


def _shutdown(ctx: Ctx, inc: Incarnation, *, cold: bool) -> None:
    cl = ctx.cluster
    inc.expected_exit = True
    inc.how = "cold" if cold else "warm"
    inc.signalled = time.time()
    inc.signal(ctx.rng.choice([signal.SIGTERM, signal.SIGINT]))
    ctx.faults["cold-term" if cold else "warm-term"] += 1
    held: set[str] = set()
    if cold:
        ctx.stop.wait(ctx.rng.uniform(0.0, 0.3))
        # After the first signal the worker claims nothing new: what it owns now is what a cold
        # stop can interrupt and give back.
        held = set(inflight_of(cl.conn(), inc.name))
        inc.cold_at = time.time()
        inc.signal(signal.SIGTERM)
    limit = cl.shutdown_timeout + 30
    if not cl.wait_exit(inc, limit):
        ctx.problems.append(Problem("worker", None, f"{inc.name} did not exit within {limit:.0f}s of a {inc.how} shutdown"))
        ctx.sigkill(inc)
        return
    led = ledger_mod.read(cl.ledger_path)
    mine = list(led.by_pid(inc.pid))
    if cold:
        assert inc.cold_at is not None
        # Runs it held at the second signal, or began after the first (a claim already in flight).
        cut = [
            e for e in mine
            if (e.key in held or e.began >= inc.signalled) and (e.end is None or (e.ended or 0) >= inc.cold_at)
        ]
        ctx.facts.cold_tokens.update(e.token for e in cut)
        ctx.note(f"cold stop {inc.name}: {len(cut)} execution(s) interrupted")
    if inc.returncode != 0:
        ctx.problems.append(Problem("worker", None, f"{inc.name} exited with code {inc.returncode} after a {inc.how} shutdown:\n{inc.tail(8)}"))
    left = ctx.left_behind(inc.name)
    if left:
        ctx.problems.append(Problem(
            "worker", left[0],
            f"{inc.how} shutdown of {inc.name} left {len(left)} job(s) in StartedJobRegistry: {left[:5]}",
        ))
        ctx.facts.crash_inflight.update(left)  # recovered as abandoned, so the rest is still checked
    ctx.dead.add(inc.name)


def _term_at_startup(ctx: Ctx, inc: Incarnation, *, what: str, limit: float = 20.0) -> None:
    inc.expected_exit = True
    inc.how = "startup-term"
    inc.signalled = time.time()
    inc.signal(signal.SIGTERM)
    ctx.faults["term-at-startup"] += 1
    if ctx.cluster.wait_exit(inc, limit):
        left = ctx.left_behind(inc.name)
        if left:
            ctx.problems.append(Problem(
                "worker", left[0], f"SIGTERM {what} of {inc.name} left {len(left)} job(s) in StartedJobRegistry: {left[:5]}",
            ))
            ctx.facts.crash_inflight.update(left)
        ctx.dead.add(inc.name)
        return
    ctx.problems.append(Problem("worker", None, f"{inc.name} ignored SIGTERM {what} (still running after {limit:.0f}s)"))
    ctx.sigkill(inc)


def _unreachable_start(ctx: Ctx, *, blackholed: bool) -> None:
    """A worker whose Redis does not answer (an address that accepts connections and never
    replies, or a closed port) must still honour SIGTERM before it ever registers."""
    import socket

    from tests.testsupport.redis_server import free_port

    cl = ctx.cluster
    hole: socket.socket | None = None
    if blackholed:
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)  # the kernel completes connections; nobody ever reads or answers
        port = hole.getsockname()[1]
    else:
        port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0?socket_timeout={SOCKET_TIMEOUT:g}&socket_connect_timeout={SOCKET_TIMEOUT:g}"
    inc = cl.spawn("unreachable", cl.asyncjobs_argv(f"{ctx.tag}-unreachable-{len(cl.incarnations)}", url), track=False)
    try:
        time.sleep(1.0 if blackholed else 0.5)  # let it reach its connection-retry loop
        inc.expected_exit = True
        inc.how = "startup-term"
        inc.signal(signal.SIGTERM)
        ctx.faults["term-redis-unreachable"] += 1
        limit = 10.0
        if not cl.wait_exit(inc, limit):
            where = "blackholed" if blackholed else "refusing connections"
            ctx.problems.append(Problem("worker", None, f"{inc.name} ignored SIGTERM at start-up while Redis was unreachable ({where}) for {limit:.0f}s"))
            inc.signal(signal.SIGKILL)
            inc.proc.wait(10)
    finally:
        if hole is not None:
            hole.close()


# ------------------------------------------------------------------ poison
def _s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _call(module: str, name: str, *args: bytes) -> bytes:
    return _s(module) + _s(name) + b"\x93(" + b"".join(args) + b"tR"


#: Issue 18's hostile payloads (the job's single argument, as pickle opcodes): each must fail its own job.
HOSTILE_ARGS = {
    "deeptuple": b"}N" + b"\x85" * 200_000 + b"K\x01s",  # SIGSEGV in tuplehash before the bounds
    "intdecimal": _call("builtins", "int", _call("decimal", "Decimal", _s("1e1000000"))),  # stalls the loop
    "listipv4": _call("builtins", "list", _call("ipaddress", "IPv4Network", _s("0.0.0.0/0"))),
    "build": _s("tests.chaos.jobs") + _s("sync_work") + b"\x93}" + _s("poisoned") + b"\x88sb",  # BUILD on a function
}
#: Jobs that end themselves: SystemExit (sync) and KeyboardInterrupt (async).
HOSTILE_CALLS = {"sysexit": ("tests.chaos.jobs.exit_now", (2,)), "kbint": ("tests.chaos.jobs.interrupt_now", ())}


def poison_entry(ctx: Ctx, conn: redis.Redis, hostile: bool = False) -> None:
    """Push one bad entry onto the priority queue, between the producer's batches of good jobs."""
    if hostile:
        kind = ctx.rng.choice([*HOSTILE_ARGS, *HOSTILE_CALLS])
    else:
        kind = ctx.rng.choices(
            ["string", "list", "nohash", "empty", "baddata", "badfunc", "badfield"], [3, 2, 1, 1, 1, 1, 1]
        )[0]
    n = len(ctx.facts.poison)  # ids are unique per scenario
    jid = f"{ctx.tag}-poison{n:04d}-{kind}"
    key = f"rq:job:{jid}"
    qkey = f"rq:queue:{POISON_QUEUE}"
    pipe = conn.pipeline(transaction=True)
    if kind == "string":
        pipe.set(key, "not a job hash")
    elif kind == "list":
        pipe.rpush(key, "not", "a", "hash")
    elif kind == "empty":
        pipe.hset(key, mapping={"status": "queued", "origin": POISON_QUEUE})
    elif kind in ("baddata", "badfunc", "badfield"):
        func = "tests.chaos.no_such_module.func" if kind == "badfunc" else "tests.chaos.jobs.sync_work"
        job = Job.create(func, kwargs={"key": jid, "seconds": 0}, connection=conn, id=jid, origin=POISON_QUEUE)
        job.set_status("queued", pipeline=pipe)
        job.save(pipeline=pipe)
        if kind == "baddata":
            pipe.hset(key, "data", b"\x00 not zlib, not pickle")
        elif kind == "badfield":
            pipe.hset(key, "created_at", "yesterday")
    elif kind in HOSTILE_CALLS:
        func, args = HOSTILE_CALLS[kind]
        job = Job.create(func, args=args, connection=conn, id=jid, origin=POISON_QUEUE)
        job.set_status("queued", pipeline=pipe)
        job.save(pipeline=pipe)
    elif kind in HOSTILE_ARGS:
        job = Job.create("tests.chaos.jobs.sync_work", args=("x", 0), connection=conn, id=jid, origin=POISON_QUEUE)
        job.set_status("queued", pipeline=pipe)
        job.save(pipeline=pipe)
        body = b"\x80\x04(" + _s("tests.chaos.jobs.sync_work") + b"N(" + HOSTILE_ARGS[kind] + b"t}t."
        pipe.hset(key, "data", zlib.compress(body))
    pipe.rpush(qkey, jid)
    pipe.sadd("rq:queues", qkey)
    pipe.execute()
    ctx.facts.poison[jid] = kind
    ctx.faults[f"poison-{kind}"] += 1


def poison_hook(ctx: Ctx, conn: redis.Redis, hostile: bool = False) -> Any:
    def between_batches() -> None:
        if ctx.rng.random() < 0.5:
            poison_entry(ctx, conn, hostile)

    return between_batches


# --------------------------------------------------------------------- cron
def cron_leader(ctx: Ctx) -> None:
    """Three ``--cron`` workers: SIGKILL whichever holds the cron lease every 2-4 s (restart under a new
    name), and measure how long the fleet goes without a leader each time (the takeover)."""
    from asyncjobs.protocol.keys import DEFAULT

    rng = ctx.rng
    conn = ctx.cluster.conn()
    while not ctx.stop.wait(rng.uniform(2.0, 4.0)):
        holder = conn.get(DEFAULT.cron_leader)
        leader = next((i for i in ctx.cluster.asyncjobs_workers() if holder and i.name == holder.decode()), None)
        if leader is None:
            continue
        ctx.sigkill(leader)
        killed = time.monotonic()
        ctx.restart(leader.slot)
        while not ctx.stop.is_set() and time.monotonic() - killed < 30:
            now = conn.get(DEFAULT.cron_leader)
            if now is not None and now != holder:
                break
            time.sleep(0.05)
        takeover = time.monotonic() - killed
        ctx.facts.cron_takeovers.append(takeover)
        ctx.faults["cron-leader-kill"] += 1
        ctx.note(f"cron: leader {holder.decode()} SIGKILLed; a new leader after {takeover:.2f}s")
        ctx.recover(settle=0.0)


# ------------------------------------------------------------ queue limits
#: The fleet-wide limits of the queuelimits scenario, on the queue only asyncjobs workers serve.
LIMITED_QUEUE = QUEUES[0]
LIMIT_CONCURRENCY = 4
LIMIT_RATE = (30, 1000)  # starts per period (ms): binds beside the concurrency (jobs of 0-200 ms)


def queuelimits(ctx: Ctx) -> None:
    """Jobs under fleet-wide queue limits (a concurrency and a rate on ``chaos-high``), while a random
    asyncjobs worker is SIGKILLed every 1-2.5 s (restart, RQ's abandoned-job cleanup), every asyncjobs
    connection goes through the fault proxy, and the queue is paused for 0.2-1 s now and then.
    Samples, from Redis, the jobs of the queue holding a live lease: ``ctx.limit_peak``."""
    from asyncjobs.limits import QueueControl

    rng = ctx.rng
    conn = ctx.cluster.conn()
    control = QueueControl(conn)
    proxy_faults = threading.Thread(target=proxy, args=(ctx,), name="chaos-proxy", daemon=True)
    proxy_faults.start()
    next_kill = time.monotonic() + rng.uniform(1.0, 2.5)
    next_pause = time.monotonic() + rng.uniform(2.0, 4.0)
    try:
        while not ctx.stop.wait(0.01):
            try:
                now = conn.time()
                now_s = now[0] + now[1] / 1e6
                live = conn.zcount(f"rq:wip:{LIMITED_QUEUE}", now_s, "+inf")
                starts = conn.zcount(f"{control.key}:rate:{LIMITED_QUEUE}", f"({now_s * 1000 - LIMIT_RATE[1]}", "+inf")
            except redis.ConnectionError:
                continue
            if live > ctx.limit_peak:
                ctx.limit_peak = live
                ctx.note(f"{live} job(s) of {LIMITED_QUEUE} hold a live lease")
            if starts > ctx.rate_peak:
                ctx.rate_peak = starts
                ctx.note(f"{starts} start(s) of {LIMITED_QUEUE} in the last rate period")
            if time.monotonic() >= next_pause:
                next_pause = time.monotonic() + rng.uniform(2.0, 4.0)
                with contextlib.suppress(redis.ConnectionError):
                    control.pause(LIMITED_QUEUE, rng.uniform(0.2, 1.0))
                    ctx.faults["pause"] += 1
            next_kill = _kill_one_when_due(ctx, rng, next_kill)
    finally:
        proxy_faults.join(60)
