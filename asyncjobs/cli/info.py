"""``asyncjobs-worker info`` and ``asyncjobs-worker check``: what runs, read from RQ's own keys.

Read-only (unlike ``rq info``, nothing is cleaned up): per live worker its name,
host, pid, queues, concurrency, totals, last heartbeat and the jobs it has in
flight, found from the StartedJobRegistry members ``<job_id>:<execution_id>``
of its queues whose execution hash names it (so a stock worker shows its one
job and an asyncjobs worker all of them); per queue the counts of queued,
started, failed, scheduled and deferred jobs and the age of the oldest queued
job.  Job functions come from the job's ``description`` (plain text written by
the producer); the payload is never unpickled here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncjobs.limits import QueueLimits, parse_limits
from asyncjobs.protocol import keys
from asyncjobs.protocol.queuestats import read_queue_sizes
from asyncjobs.redact import escape_controls

__all__ = [
    "CronJobView",
    "CronView",
    "JobInFlight",
    "QueueInfo",
    "RegistryMemory",
    "Snapshot",
    "WorkerView",
    "check",
    "collect",
    "format_snapshot",
]

ASYNCJOBS_MARK = "asyncjobs"


@dataclass
class JobInFlight:
    job_id: str
    execution_id: str
    queue: str
    func: str
    running_s: float | None


@dataclass
class WorkerView:
    name: str
    hostname: str
    pid: int | None
    queues: list[str]
    state: str
    version: str
    kind: str  # "asyncjobs" or "rq"
    concurrency: int | None
    successful: int
    failed: int
    working_s: float
    birth: str | None
    last_heartbeat: str | None
    heartbeat_age_s: float | None
    dead: bool
    jobs: list[JobInFlight] = field(default_factory=list)


@dataclass
class QueueInfo:
    name: str
    queued: int
    started: int
    failed: int
    scheduled: int
    deferred: int
    oldest_queued_age_s: float | None
    #: jobs running on all workers whose heartbeat deadline has not passed (what a concurrency limit counts)
    running: int = 0
    #: the queue's limits (asyncjobs/limits.py); None when not set
    limit_concurrency: int | None = None
    limit_rate: str | None = None
    rate_window_starts: int | None = None  # starts in the rate's current window
    paused_until: str | None = None  # ISO time, "until resumed", or None


@dataclass
class RegistryMemory:
    """What a queue's list or registry costs Redis, estimated from a sample: the key itself plus
    ``jobs`` x the mean ``MEMORY USAGE`` of up to :data:`MEMORY_SAMPLE` of its jobs (hash + results)."""

    queue: str
    registry: str  # queued, started, finished, failed, scheduled, deferred
    jobs: int
    bytes: int
    sampled: int


#: Jobs per registry whose MEMORY USAGE is read (never a scan of the registry).
MEMORY_SAMPLE = 3


@dataclass
class CronJobView:
    name: str
    queue: str
    schedule: str  # "every 60s" or the cron expression
    last_run: str | None  # RQ's latest_enqueue_time (UTC)
    next_run: str | None  # RQ's next_enqueue_time (UTC)


@dataclass
class CronView:
    """``--cron``: the worker holding the leader lease, its lease left, and its cron jobs (as it
    recorded them in RQ's CronScheduler hash); ``schedulers``: every CronScheduler RQ lists (the
    leader, and any stock ``rq cron``)."""

    leader: str | None
    lease_left_s: float | None
    schedulers: list[str]
    jobs: list[CronJobView] = field(default_factory=list)


@dataclass
class Snapshot:
    at: str
    workers: list[WorkerView]
    queues: list[QueueInfo]
    cron: CronView | None = None
    memory: list[RegistryMemory] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(float(_text(value)))
    except ValueError:
        return default


def _parse_ts(value: str) -> float | None:
    """RQ's UTC timestamps (``2026-11-29T00:52:10.122117Z``, older ``...Z`` without micros)."""
    text = value.strip()
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def _func(description: str) -> str:
    """``compat.jobs.add(1, 2)`` -> ``compat.jobs.add`` (the description is what the producer stored)."""
    head = description.split("(", 1)[0].strip()
    return head or "?"


def collect(conn: Any, queues: Sequence[str] | None = None, now: float | None = None) -> Snapshot:
    """Read workers and queues with a synchronous ``redis.Redis`` (pipelined, read-only)."""
    now = time.time() if now is None else now
    if queues:
        queue_names = list(dict.fromkeys(queues))
    else:
        queue_names = sorted(_text(k).removeprefix(keys.DEFAULT.queue_prefix) for k in conn.smembers(keys.QUEUES))
    limits = parse_limits(conn.hgetall(keys.DEFAULT.queue_limits))
    if not queues:
        queue_names = sorted(set(queue_names) | set(limits))
    worker_keys = sorted(_text(k) for k in conn.smembers(keys.WORKERS))

    pipe = conn.pipeline(transaction=False)
    for wk in worker_keys:
        pipe.hgetall(wk)
    raw_workers = pipe.execute() if worker_keys else []
    workers: list[WorkerView] = []
    for wk, raw in zip(worker_keys, raw_workers, strict=True):
        if not raw:
            continue  # expired key left in the set: not live (RQ drops these on read too)
        data = {_text(k): _text(v) for k, v in raw.items()}
        hb = _parse_ts(data.get("last_heartbeat", ""))
        version = data.get("version", "")
        conc = data.get("concurrency")
        wqueues = [q for q in data.get("queues", "").split(",") if q]
        if queues and not set(wqueues) & set(queue_names):
            continue
        workers.append(
            WorkerView(
                name=wk.removeprefix(keys.DEFAULT.worker_prefix),
                hostname=data.get("hostname", ""),
                pid=_int(data["pid"]) if data.get("pid") else None,
                queues=wqueues,
                state=data.get("state", "?"),
                version=version,
                kind=ASYNCJOBS_MARK if ASYNCJOBS_MARK in version else "rq",
                concurrency=_int(conc) if conc else (1 if ASYNCJOBS_MARK not in version else None),
                successful=_int(data.get("successful_job_count")),
                failed=_int(data.get("failed_job_count")),
                working_s=float(data.get("total_working_time") or 0),
                birth=data.get("birth"),
                last_heartbeat=data.get("last_heartbeat"),
                heartbeat_age_s=None if hb is None else max(0.0, now - hb),
                dead="death" in data,
            )
        )

    # Jobs in flight: StartedJobRegistry members of the workers' queues -> execution hash -> worker_name.
    by_name = {w.name: w for w in workers}
    wip_queues = sorted({q for w in workers for q in w.queues})
    pipe = conn.pipeline(transaction=False)
    for q in wip_queues:
        pipe.zrange(keys.started(q), 0, -1)
    members_per_queue = pipe.execute() if wip_queues else []
    pairs: list[tuple[str, str, str]] = []
    for q, members in zip(wip_queues, members_per_queue, strict=True):
        for m in members:
            jid, sep, eid = _text(m).rpartition(":")
            if sep:
                pairs.append((q, jid, eid))
    pipe = conn.pipeline(transaction=False)
    for _q, jid, eid in pairs:
        pipe.hmget(keys.execution(jid, eid), "worker_name", "created_at")
        pipe.hget(keys.job(jid), "description")
    replies = pipe.execute() if pairs else []
    for i, (q, jid, eid) in enumerate(pairs):
        (worker_name, created), description = replies[2 * i], replies[2 * i + 1]
        owner = by_name.get(_text(worker_name))
        if owner is None:
            continue
        started = float(_text(created)) if created else None
        owner.jobs.append(
            JobInFlight(jid, eid, q, _func(_text(description)), None if started is None else max(0.0, now - started))
        )
    for w in workers:
        w.jobs.sort(key=lambda j: -(j.running_s or 0))

    qinfos = [
        QueueInfo(z.queue, z.queued, z.started, z.failed, z.scheduled, z.deferred, z.oldest_age)
        for z in read_queue_sizes(conn, queue_names, now)
    ]
    _add_limits(conn, qinfos, limits, now)
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return Snapshot(stamp, workers, qinfos, _cron(conn), _memory(conn, [q.name for q in qinfos]))


def _memory(conn: Any, queue_names: Sequence[str]) -> list[RegistryMemory]:
    """Sampled memory per queue and registry: two pipelined rounds, O(queues x MEMORY_SAMPLE)."""
    d = keys.DEFAULT
    regs = [(q, r, k) for q in queue_names for r, k in (
        ("queued", d.queue(q)), ("started", d.started(q)), ("finished", d.finished(q)), ("failed", d.failed(q)),
        ("scheduled", d.scheduled(q)), ("deferred", d.deferred(q)))]
    if not regs:
        return []
    pipe = conn.pipeline(transaction=False)
    for _q, r, k in regs:
        if r == "queued":
            pipe.llen(k)
            pipe.lrange(k, 0, MEMORY_SAMPLE - 1)
        else:
            pipe.zcard(k)
            pipe.zrange(k, 0, MEMORY_SAMPLE - 1)
        pipe.memory_usage(k, samples=5)
    replies = pipe.execute(raise_on_error=False)
    samples: list[list[str]] = []
    pipe = conn.pipeline(transaction=False)
    for i, (_q, r, _k) in enumerate(regs):
        members = replies[3 * i + 1]
        members = members if isinstance(members, list) else []
        ids = [_text(m).rpartition(":")[0] if r == "started" else _text(m) for m in members]
        samples.append(ids)
        for jid in ids:
            pipe.memory_usage(d.job(jid), samples=5)
            pipe.memory_usage(d.results(jid), samples=5)
    sizes = iter(pipe.execute(raise_on_error=False) if any(samples) else [])
    out: list[RegistryMemory] = []
    for i, (q, r, _k) in enumerate(regs):
        count, own = replies[3 * i], replies[3 * i + 2]
        per_job = [sum(v for v in (next(sizes), next(sizes)) if isinstance(v, int)) for _ in samples[i]]
        jobs = count if isinstance(count, int) else 0
        mean = sum(per_job) / len(per_job) if per_job else 0
        out.append(RegistryMemory(q, r, jobs, int((own if isinstance(own, int) else 0) + jobs * mean), len(per_job)))
    return out


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _cron(conn: Any) -> CronView | None:
    """The cron leader and its jobs' last and next runs (None when no cron runs at all)."""
    import json

    pipe = conn.pipeline(transaction=False)
    pipe.get(keys.DEFAULT.cron_leader)
    pipe.pttl(keys.DEFAULT.cron_leader)
    pipe.zrange(keys.DEFAULT.cron_schedulers, 0, -1)
    leader_raw, pttl, names = pipe.execute()
    leader = _text(leader_raw) or None
    schedulers = [_text(n) for n in names]
    if leader is None and not schedulers:
        return None
    view = CronView(leader, pttl / 1000 if leader and pttl and pttl > 0 else None, schedulers)
    source = leader or schedulers[-1]
    raw = conn.hget(keys.DEFAULT.cron_scheduler(source), "cron_jobs")
    try:
        entries = json.loads(_text(raw)) if raw else []
    except ValueError:
        entries = []
    for e in entries if isinstance(entries, list) else []:
        schedule = f"every {e.get('interval')}s" if e.get("interval") else str(e.get("cron") or "?")
        view.jobs.append(CronJobView(str(e.get("name") or e.get("func_name") or "?"), str(e.get("queue_name", "?")),
                                     schedule, e.get("latest_enqueue_time"), e.get("next_enqueue_time")))
    return view


def _add_limits(conn: Any, qinfos: list[QueueInfo], limits: dict[str, QueueLimits], now: float) -> None:
    """Jobs running fleet-wide (live leases), and each queue's limits, into ``qinfos``."""
    if not qinfos:
        return
    pipe = conn.pipeline(transaction=False)
    for q in qinfos:
        pipe.zcount(keys.started(q.name), now, "+inf")
        rate = limits[q.name].rate if q.name in limits else None
        if rate is not None:
            pipe.zcount(f"{keys.DEFAULT.queue_limits}:rate:{q.name}", now * 1000 - rate.period_ms, "+inf")
    replies = iter(pipe.execute())
    for q in qinfos:
        q.running = int(next(replies))
        lim = limits.get(q.name)
        if lim is None:
            continue
        q.limit_concurrency = lim.concurrency
        if lim.rate is not None:
            q.limit_rate = str(lim.rate)
            q.rate_window_starts = int(next(replies))
        if lim.paused_at(now):
            assert lim.paused_until is not None
            q.paused_until = "until resumed" if lim.paused_until == float("inf") else (
                datetime.fromtimestamp(lim.paused_until, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_snapshot(snap: Snapshot, *, max_jobs: int = 10) -> str:
    lines = [f"Workers ({len(snap.workers)}) at {snap.at}"]
    for w in snap.workers:
        conc = "?" if w.concurrency is None else str(w.concurrency)
        lines.append(
            f"  {w.name}  {w.kind}  host={w.hostname} pid={w.pid}  queues={','.join(w.queues)}  "
            f"state={w.state}{' (dead)' if w.dead else ''}"
        )
        lines.append(
            f"    in flight {len(w.jobs)}/{conc}  finished {w.successful}  failed {w.failed}  "
            f"working {w.working_s:.1f}s  last heartbeat {_age(w.heartbeat_age_s)} ago  version {w.version}"
        )
        for j in w.jobs[:max_jobs]:
            lines.append(f"      {j.job_id}  {j.queue}  {j.func}  running {_age(j.running_s)}")
        if len(w.jobs) > max_jobs:
            lines.append(f"      ... and {len(w.jobs) - max_jobs} more")
    lines.append("")
    lines.append(f"Queues ({len(snap.queues)})")
    header = f"  {'queue':<20} {'queued':>7} {'started':>8} {'failed':>7} {'scheduled':>9} {'deferred':>8}  oldest queued"
    lines.append(header)
    for q in snap.queues:
        lines.append(
            f"  {q.name:<20} {q.queued:>7} {q.started:>8} {q.failed:>7} {q.scheduled:>9} {q.deferred:>8}  "
            f"{_age(q.oldest_queued_age_s)}"
        )
    limited = [q for q in snap.queues if describe_limits(q)]
    if limited:
        lines.append("")
        lines.append("Queue limits (fleet-wide; `asyncjobs-worker queues`)")
        for q in limited:
            lines.append(f"  {q.name:<20} {describe_limits(q)}")
        lines.extend(f"  warning: {w}" for w in stock_warnings(snap))
    if any(m.jobs for m in snap.memory):
        lines.append("")
        lines.append(f"Memory by registry (estimated: the key + jobs x the mean of up to {MEMORY_SAMPLE} sampled "
                     "jobs with their results)")
        for m in snap.memory:
            if m.jobs:
                lines.append(f"  {m.queue:<20} {m.registry:<9} {m.jobs:>7} jobs  ~{_bytes(m.bytes)}")
    if snap.cron is not None:
        c = snap.cron
        lease = f" (lease {c.lease_left_s:.1f}s left)" if c.lease_left_s is not None else ""
        lines.append("")
        lines.append(f"Cron: leader {c.leader or 'none'}{lease}; RQ cron schedulers: {', '.join(c.schedulers) or 'none'}")
        for cj in c.jobs:
            lines.append(f"  {cj.name}  queue={cj.queue}  {cj.schedule}  last run {cj.last_run or '-'}  "
                         f"next run {cj.next_run or '-'}")
    # Redis-sourced text (descriptions, worker fields, names) never reaches the terminal raw
    return "\n".join(escape_controls(line) for line in lines)


def describe_limits(q: QueueInfo) -> str:
    """``running 3/10  rate 20/s (12 in window)  paused until ...``; "" for a queue without limits."""
    parts = []
    if q.limit_concurrency is not None:
        parts.append(f"running {q.running}/{q.limit_concurrency}")
    if q.limit_rate is not None:
        parts.append(f"rate {q.limit_rate} ({q.rate_window_starts} in window)")
    if q.paused_until is not None:
        parts.append(f"paused {q.paused_until}" if q.paused_until == "until resumed" else f"paused until {q.paused_until}")
    return "  ".join(parts)


def stock_warnings(snap: Snapshot) -> list[str]:
    """Stock ``rq worker`` processes serving a limited queue: they do not obey its limits."""
    out = []
    limited = {q.name for q in snap.queues if describe_limits(q)}
    for w in snap.workers:
        served = sorted(limited & set(w.queues))
        if w.kind != ASYNCJOBS_MARK and not w.dead and served:
            out.append(f"stock worker {w.name} serves {','.join(served)}: it does not know queue limits or pauses")
    return out


def check(
    snap: Snapshot,
    *,
    name: str | None = None,
    queues: Iterable[str] = (),
    hostname: str | None = None,
    max_heartbeat_age: float = 60.0,
) -> tuple[bool, str]:
    """Is a live worker with this name (or ``name-<i>`` under ``--processes``), or serving exactly
    this queue set, registered and heart-beating?  (ok, reason)."""
    wanted = set(queues)
    where = f" on host {hostname}" if hostname else ""

    def matches(w: WorkerView) -> bool:
        if hostname and w.hostname != hostname:
            return False
        if name is not None:
            head, _, tail = w.name.rpartition("-")
            if w.name != name and not (head == name and tail.isdigit()):
                return False
        return not wanted or set(w.queues) == wanted

    what = " ".join(
        part
        for part in (f"named {name!r}" if name else "", f"for queues {','.join(sorted(wanted))}" if wanted else "")
        if part
    ) or "at all"
    found = [w for w in snap.workers if matches(w)]
    if not found:
        others = ", ".join(f"{w.name}@{w.hostname}" for w in snap.workers) or "none"
        return False, f"no worker {what} is registered{where} (registered: {others})"
    alive = [w for w in found if not w.dead and w.heartbeat_age_s is not None and w.heartbeat_age_s <= max_heartbeat_age]
    if not alive:
        worst = found[0]
        if worst.dead:
            return False, f"worker {worst.name} registered its death"
        return False, (
            f"worker {worst.name} last heart-beat {_age(worst.heartbeat_age_s)} ago "
            f"(more than {max_heartbeat_age:g}s): its event loop is stuck or it lost Redis"
        )
    names = ", ".join(f"{w.name} (heartbeat {_age(w.heartbeat_age_s)} ago)" for w in alive)
    return True, f"ok: {names}"


def this_host() -> str:
    return socket.gethostname()
