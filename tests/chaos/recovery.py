"""RQ's own abandoned-job maintenance, run by the harness after a worker dies.

A SIGKILLed worker leaves its executions in ``rq:wip:<q>`` with a heartbeat
deadline about 61 s ahead (``--job-monitoring-interval 1``: TTL = interval + 60).
Stock RQ recovers them once that deadline has passed, in ``StartedJobRegistry.cleanup``
(docs/rq-protocol.md §10.2).  Waiting a minute per kill would make the bounded run
long, so the harness calls that same function with a *timestamp* past the
deadlines instead of waiting for the clock (the same function, run a little early).

It must not fail a job that a live worker is still running, which a future
timestamp could do, so the timestamp ``T`` is the latest deadline among
executions owned by dead workers (the owner is the ``worker_name`` of the
``rq:execution:<id>:<eid>`` hash), and the cleanup only runs once no execution of
a live (or unknown) owner has a deadline at or before ``T``: live workers'
heartbeats (every second) push theirs past it.  If one does not move in time, ``T``
is lowered below it and the rest waits for a later pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from rq.registry import StartedJobRegistry

from tests.chaos.cluster import QUEUES


@dataclass(frozen=True)
class WipEntry:
    queue: str
    job_id: str
    execution_id: str
    score: float
    owner: str | None  # worker_name of the execution hash, None when that hash is gone


def read_wip(conn: redis.Redis) -> list[WipEntry]:
    conn.ping()  # anything a just-killed client had sent is processed before we read (same event-loop pass)
    raw: list[tuple[str, str, str, float]] = []
    for q in QUEUES:
        for member, score in conn.zrange(f"rq:wip:{q}", 0, -1, withscores=True):
            text = member.decode()
            jid, _, eid = text.rpartition(":")
            raw.append((q, jid, eid, float(score)))
    pipe = conn.pipeline(transaction=False)
    for _, jid, eid, _ in raw:
        pipe.hget(f"rq:execution:{jid}:{eid}", "worker_name")
    owners = pipe.execute() if raw else []
    return [
        WipEntry(q, jid, eid, score, owner.decode() if owner else None)
        for (q, jid, eid, score), owner in zip(raw, owners, strict=True)
    ]


def inflight_of(conn: redis.Redis, worker_name: str) -> list[str]:
    """Job ids of the executions ``worker_name`` owned in the StartedJobRegistry (read after its death)."""
    return [e.job_id for e in read_wip(conn) if e.owner == worker_name]


@dataclass
class CleanupPass:
    cleaned: int = 0  # executions handed to RQ's cleanup
    deferred: int = 0  # left for a later pass (a live execution's deadline was not past T yet)
    unowned: list[WipEntry] = field(default_factory=list)  # final pass: stale, yet no dead worker owned them
    #: the executions of dead workers handed to RQ's cleanup (some may have appeared after their owner's
    #: death was recorded: a claim it sent just before, delivered late through the fault proxy)
    recovered: list[WipEntry] = field(default_factory=list)


def _last_beat(conn: redis.Redis, worker: str) -> float | None:
    from rq.utils import utcparse

    raw = conn.hget(f"rq:worker:{worker}", "last_heartbeat")
    if not raw:
        return None
    try:
        return float(utcparse(raw.decode()).timestamp())
    except ValueError:
        return None


#: The shortest heartbeat TTL of the chaos workers (``--job-monitoring-interval 1``: 1 + 60 s): a claim
#: at time t has its deadline at int(t) + MIN_TTL or later.
MIN_TTL = 61

STALE_AFTER = 25.0  # > the worker's longest wait before re-sending a claim (10 s backoff + timeouts)


def recover_abandoned(
    conn: redis.Redis, dead: set[str], settle: float = 5.0, *, final: bool = False, patience: float = 60.0,
    stale_after: float = STALE_AFTER, one_job_workers: set[str] | None = None,
) -> CleanupPass:
    """RQ's ``StartedJobRegistry.cleanup`` with ``T`` = the latest deadline among dead workers'
    executions, once no other execution's deadline is at or before ``T`` (see the module doc).

    ``final`` (faults are over): an execution of a live worker whose deadline has not moved for
    ``stale_after`` seconds while that worker kept heart-beating (its heartbeat refreshes every
    execution it runs, in the same script) is run by no one, so RQ's maintenance will fail it as
    abandoned when the clock reaches its deadline; so is one whose owner is unknown (its execution
    record gone) after ``settle`` seconds.  Such executions are cleaned too and returned in
    ``unowned`` (a claim that no task runs).  ``stale_after`` exceeds the time a worker may still
    be re-sending a claim whose reply a fault lost (it learns its jobs when the re-send answers).
    A stock worker (``one_job_workers``) heart-beats only while busy, and names the one job it
    runs in ``current_job``: its execution is stale once it names another job (or none).
    A worker that does not heart-beat within ``patience`` seconds is left alone."""

    def key(e: WipEntry) -> tuple[str, str, str]:
        return (e.queue, e.job_id, e.execution_id)

    t0 = time.time()
    seen = read_wip(conn)
    first = {key(e): e.score for e in seen}
    first_owner = {key(e): e.owner for e in seen}  # an execution record may expire while we wait
    single = one_job_workers or set()
    start = time.monotonic()
    while True:
        entries = read_wip(conn)
        waited = time.monotonic() - start
        targets = [e for e in entries if e.owner in dead]
        if final:
            unmoved = [e for e in entries if e.owner not in dead and first.get(key(e)) == e.score]
            beats = {o: _last_beat(conn, o) for o in {e.owner for e in unmoved if e.owner is not None}}
            confirmed, pending = [], []
            for e in unmoved:
                beat = beats.get(e.owner) if e.owner is not None else None
                if e.owner in single and beat is not None and waited >= stale_after:
                    running = conn.hget(f"rq:worker:{e.owner}", "current_job")
                    (pending if running and running.decode() == e.job_id else confirmed).append(e)
                elif beat is not None and waited >= stale_after and beat >= t0 + stale_after - 1.0:
                    confirmed.append(e)  # its worker keeps heart-beating, without it
                elif (e.owner is None or beat is None) and waited >= settle:
                    confirmed.append(e)  # nobody left to heart-beat it
                else:
                    pending.append(e)
            if pending and waited < max(patience, stale_after + 5.0):
                time.sleep(0.1)
                continue
            targets += confirmed
        if not targets:
            return CleanupPass()
        stamp = max(e.score for e in targets)
        chosen = {key(e) for e in targets}
        blockers = [e for e in entries if key(e) not in chosen and e.score <= stamp]
        if not blockers or waited >= settle:
            break
        time.sleep(0.1)
    if blockers:
        stamp = min(e.score for e in blockers) - 0.001
    # A claim made after the read above is no blocker, yet its deadline may equal the stamp: the worker
    # writes whole seconds (int(now) + TTL), and a dead worker's last heartbeat may have been in the same
    # second.  RQ's cleanup then failed it as abandoned, or (claimed between the cleanup's read and its
    # ZREMRANGEBYSCORE) dropped its wip entry, so its outcome was refused as stale: a "lost" job that was
    # the harness's doing (its timestamp is in the future; RQ's own maintenance uses now).  So wait
    # until any claim from now on gets a later deadline, then look once more.
    # (Bounded: a dead worker's deadline is at most int(its death) + MIN_TTL, so this is under a second
    # in a run; stamps far ahead are the unit tests' own.)
    wait_until = time.monotonic() + 2.0
    while int(time.time()) + MIN_TTL <= stamp and time.monotonic() < wait_until:
        time.sleep(0.02)
    later = [e for e in read_wip(conn) if key(e) not in chosen and e.score <= stamp]
    if later:
        stamp = min(e.score for e in later) - 0.001
    cleaned = [e for e in targets if e.score <= stamp]
    if cleaned:
        for q in QUEUES:
            StartedJobRegistry(q, connection=conn).cleanup(timestamp=stamp)
    unowned = [
        WipEntry(e.queue, e.job_id, e.execution_id, e.score, e.owner or first_owner.get(key(e)))
        for e in cleaned if e.owner not in dead
    ]
    recovered = [e for e in cleaned if e.owner in dead]
    return CleanupPass(len(cleaned), len(targets) - len(cleaned), unowned, recovered)


def intermediate_ids(conn: redis.Redis) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for q in QUEUES:
        out += [(q, j.decode()) for j in conn.lrange(f"rq:queue:{q}:intermediate", 0, -1)]
    return out


def clean_intermediate(conn: redis.Redis, ids: list[tuple[str, str]], worker_name: str) -> int:
    """One pass of RQ's intermediate-list maintenance (docs/rq-protocol.md §10.3), with RQ's own methods,
    for the given (queue, job id) pairs only: first sight is recorded; an id seen more than 60 s
    earlier and still not started is failed (``handle_job_failure``) and removed.  Returns how many
    were failed.  (RQ's own pass walks the whole list, including ids a dead stock worker left
    behind for jobs that have run since; failing those again is RQ's flaw, not the worker's.)"""
    from rq import Queue
    from rq.worker import SimpleWorker

    failed = 0
    for qname, jid in ids:
        queue = Queue(qname, connection=conn)
        shim = SimpleWorker([queue], connection=conn, name=worker_name)
        iq = queue.intermediate_queue
        if iq.set_first_seen(jid) or not iq.should_be_cleaned_up(jid):
            continue
        job = queue.fetch_job(jid)
        if job is not None:
            shim.handle_job_failure(job, queue, exc_string="Job was stuck in intermediate queue.")
            failed += 1
        iq.remove(jid)
    return failed
