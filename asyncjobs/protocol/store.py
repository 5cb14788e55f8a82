"""Async store on redis.asyncio speaking RQ's format (2.12 and 3.x; docs/rq-protocol.md §13).

Every multi-key transition is one Lua script call, batched across jobs:
claiming N jobs (pop + start), finishing N jobs (results, registries, TTLs,
dependents, worker counters) and heart-beating every running execution each
cost one round trip whatever N is.  One store serves one key prefix (``keys``):
every script is passed the prefix as ``KEYS[1]`` and builds its keys from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from asyncjobs.protocol.codec import MalformedJobError, hash_from_latin1, normalize_hash, parse_job_hash
from asyncjobs.protocol.keys import DEFAULT, Keys
from asyncjobs.protocol.rqversion import RQ_MAJOR, RQ_VERSION
from asyncjobs.protocol.scripts import lua
from asyncjobs.protocol.timeutil import epoch_float, epoch_int, format_utc, utcnow
from asyncjobs.protocol.transitions import Transition

__all__ = [
    "CLAIM_RECORD_TTL", "RQ_VERSION", "ClaimRequest", "ClaimResult", "Claimed", "Outcomes", "RedisStore",
    "Running", "WorkerInfo", "WorkerNameTaken", "registered_version",
]


_script = lua


#: How long a claim's record outlives its call (a replay after a longer outage claims afresh;
#: the jobs of the lost call are by then RQ's abandoned-job maintenance's).
CLAIM_RECORD_TTL = 3600


def _exchange_script() -> str:
    """``lua/exchange.lua`` with finish.lua and claim.lua included: finish then claim in one atomic call,
    idempotent per claim token (the file says how).
    """
    source = _script("exchange.lua").replace("__CLAIM_RECORD_TTL__", str(CLAIM_RECORD_TTL))
    for name in ("finish.lua", "claim.lua"):
        source = source.replace(f"--#include {name}\n", _script(name) + "\n")
    return source


@dataclass(frozen=True, slots=True)
class Outcomes:
    """End-of-execution transitions to store together, with the worker's state to write."""

    transitions: Sequence[Transition]
    state: str | None = None  # worker state to write ("busy"/"idle"), with current_job below
    current_job: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """One claim, identified by its token: re-sending the same request never claims twice."""

    token: str  # Redis key of the claim's record; "" when nothing is claimed
    queues: tuple[str, ...]
    count: int
    execution_ids: tuple[str, ...]
    caps: tuple[int, ...] = ()  # this worker's own room per queue (-1: none), as ``queues``; () for none at all
    check_limits: bool = True  # read the queue limits (False: the worker knows none of these has any)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job popped and marked started; ``raw`` is its hash as read by the claim."""

    queue: str
    job_id: str
    execution_id: str
    raw: Mapping[str, bytes]
    started_at: datetime

    @property
    def rate_limit_key(self) -> str | None:
        """RQ 3: the key whose slot the job holds (both ``rate_limit_*`` fields set), else None."""
        key, concurrency = self.raw.get("rate_limit_key"), self.raw.get("rate_limit_concurrency")
        if not key or not concurrency:
            return None
        return key.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ClaimResult:
    jobs: list[Claimed] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # ids whose hash is gone (or has no data)
    poisoned: list[tuple[str, str]] = field(default_factory=list)  # (id, Redis type) of non-hash keys
    suspended: bool = False
    #: queues with jobs that a queue limit held back: milliseconds until one may open (-1: paused)
    blocked: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Running:
    queue: str
    job_id: str
    execution_id: str


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    queues: tuple[str, ...]
    ttl: int = 480
    concurrency: int | None = None  # jobs in flight at once; shown by `asyncjobs-worker info`


def registered_version(concurrency: int | None = None) -> str:
    """The worker hash's ``version``: the installed RQ's, with asyncjobs (and its concurrency) as a
    PEP 440 local label, e.g. ``3.0.0+asyncjobs.0.1.0.c50``. Stock readers store it as text
    (``Worker.refresh``) and rq-dashboard shows it as "RQ <version>"; anything parsing it as a
    version still gets RQ's."""
    from asyncjobs import __version__

    label = f"asyncjobs.{__version__}" + (f".c{concurrency}" if concurrency else "")
    return f"{RQ_VERSION}+{label}"


def _text(latin1: str) -> str:
    """A key name sent through exchange.lua's JSON (one char per byte) as the UTF-8 text it is."""
    return latin1 if latin1.isascii() else latin1.encode("latin-1").decode("utf-8", "replace")


class WorkerNameTaken(RuntimeError):
    pass




class RedisStore:
    """RQ-format operations for one worker identity under one key prefix.

    ``rq_major`` is the RQ major whose readers to write for (the installed one by default): it
    decides what differs between RQ 2.12 and 3 (docs/rq-protocol.md §13.1).
    """

    def __init__(
        self,
        redis: Redis,
        worker_name: str,
        *,
        heartbeat_ttl: int = 90,
        keys: Keys = DEFAULT,
        rq_major: int = RQ_MAJOR,
    ) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self.heartbeat_ttl = heartbeat_ttl
        self.keys = keys
        self.rq_major = rq_major
        self._prefix_key = [keys.prefix]
        self._exchange_keys = [keys.prefix, keys.queue_limits]
        self._finish: AsyncScript = redis.register_script(_script("finish.lua"))
        self._heartbeat: AsyncScript = redis.register_script(_script("heartbeat.lua"))
        self._exchange: AsyncScript = redis.register_script(_exchange_script())
        # Claim tokens are unique to this process: another process of the same worker name (a restart,
        # a --processes child) must never find one of them and take its claim for a replay.
        # Under the prefix: with a hash-tag prefix ({rq}) they share the slot of the keys they go with.
        self._token_prefix = f"{keys.prefix}:asyncjobs:claim:{worker_name}:{uuid.uuid4().hex[:16]}"
        self._claims = 0
        self._answered: list[str] = []  # tokens of claims whose reply arrived: deleted by the next call
        self._queues_key: tuple[str, ...] = ()
        self._queues_json = "[]"

    # -- timing helpers -------------------------------------------------
    def _start_args(self, now: datetime) -> list[str]:
        ts = epoch_int(now)
        hb = self.heartbeat_ttl
        return [
            self.worker_name, epoch_float(now), format_utc(now),
            str(ts + hb), str(hb), str(ts + hb + 60), str(hb + 60),
        ]

    # -- dequeue ----------------------------------------------------------
    def claim_request(
        self, queues: Sequence[str], count: int, execution_ids: Sequence[str], caps: Sequence[int] = (),
        *, check_limits: bool = True,
    ) -> ClaimRequest:
        """A new claim of up to ``count`` jobs, to pass to :meth:`exchange` (and again, unchanged,
        if its reply was lost).  ``caps``: at most this many of each queue (-1: no own cap);
        ``check_limits``: False when none of ``queues`` has queue limits (saves the read)."""
        token = ""
        if count > 0:
            self._claims += 1
            token = f"{self._token_prefix}:{self._claims}"
        own = tuple(caps) if any(c >= 0 for c in caps) else ()
        return ClaimRequest(token, tuple(queues), count, tuple(execution_ids[:count]), own, check_limits)

    def _queues_arg(self, queues: tuple[str, ...]) -> str:
        """The queue names as claim.lua takes them (one JSON array), kept while the worker asks for the
        same queues in the same order (most claims)."""
        if queues != self._queues_key:
            self._queues_key, self._queues_json = queues, json.dumps(queues, ensure_ascii=False)
        return self._queues_json

    async def exchange(self, outcomes: Outcomes | None, request: ClaimRequest) -> ClaimResult:
        """Store ``outcomes`` (if any), then claim: one atomic round trip.

        Safe to repeat with the same ``request`` when the outcome of a call is unknown (a
        timeout, a dropped connection): outcomes already stored are skipped and the jobs the
        first call claimed are returned again instead of new ones.
        """
        now = utcnow()
        payload = self._finish_payload(outcomes, now) if outcomes is not None and outcomes.transitions else ""
        if not payload and not request.count:
            return ClaimResult()
        answered, self._answered = self._answered, []
        args = [
            payload, request.token, " ".join(answered),
            *self._start_args(now), str(request.count), str(len(request.queues)),
            "1" if request.check_limits else "0", self._queues_arg(request.queues),
            json.dumps(request.caps) if request.caps else "", *request.execution_ids,
        ]
        try:
            reply = await self._exchange(keys=self._exchange_keys, args=args)
        except BaseException:
            self._answered = answered + self._answered  # not known to be deleted: try again next time
            raise
        if request.token:
            self._answered.append(request.token)
        return self._parse_claim(reply, now)

    async def wait_for_job(self, queue: str, timeout: float) -> bool:
        """Block until ``queue`` has a job (or ``timeout`` passes), without taking it.

        ``BLMOVE q q LEFT LEFT`` pops the head and pushes it back in one step: the list is
        unchanged, so a lost reply, a retry or a cancelled wait can never strand an id
        (docs/rq-protocol.md §11.3).
        """
        key = self.keys.queue(queue)
        value = await self.redis.blmove(key, key, timeout, "LEFT", "LEFT")  # type: ignore[arg-type]
        return value is not None

    @staticmethod
    def _parse_claim(reply: Any, now: datetime) -> ClaimResult:
        suspended, claimed, dropped, poisoned = reply[:4]
        blocked = {q.decode(): int(ms) for q, ms in reply[4]} if len(reply) > 4 else {}
        jobs: list[Claimed] = []
        if isinstance(claimed, bytes):  # exchange.lua's JSON: every string one latin-1 char per byte
            for q, jid, eid, flat in json.loads(claimed.decode("latin-1")):
                jobs.append(Claimed(_text(q), _text(jid), _text(eid), hash_from_latin1(flat), now))
        for q, jid, eid, flat in claimed if isinstance(claimed, list) else ():
            pairs = dict(zip(flat[0::2], flat[1::2], strict=True))
            jobs.append(Claimed(q.decode(), jid.decode(), eid.decode(), normalize_hash(pairs), now))
        return ClaimResult(
            jobs,
            [d.decode() for d in dropped],
            [(i.decode(), t.decode()) for i, t in poisoned],
            bool(suspended),
            blocked,
        )

    # -- completion --------------------------------------------------------
    async def finish(self, outcomes: Outcomes) -> None:
        """Store outcomes alone (no claim); applying the same outcome twice is a no-op."""
        if outcomes.transitions:
            await self._finish(keys=self._prefix_key, args=[self._finish_payload(outcomes, utcnow())])

    def _finish_payload(self, outcomes: Outcomes, now: datetime) -> str:
        payload: dict[str, Any] = {
            "worker": self.worker_name,
            "now": str(epoch_int(now)),
            "now_ts": format_utc(now),
            "jobs": [t.to_wire() for t in outcomes.transitions],
        }
        if self.rq_major >= 3:
            payload["rq3"] = True
        if outcomes.state is not None:
            payload["state"] = outcomes.state
            payload["current"] = outcomes.current_job or ""
        return json.dumps(payload)

    async def heartbeat(self, running: Sequence[Running], worker_ttl: int) -> bool:
        """Refresh every running execution and the worker key; False if the worker key had expired."""
        now = utcnow()
        args = [self.worker_name, str(worker_ttl), *self._start_args(now)[1:]]
        for r in running:
            args += [r.queue, r.job_id, r.execution_id]
        alive = await self._heartbeat(keys=self._prefix_key, args=args)
        return bool(alive)

    async def repair_abandoned(self, queues: Sequence[str]) -> list[str]:
        """Make abandoned jobs that RQ cannot load loadable again; returns their ids.

        A job is claimed before its hash is parsed, so a worker that dies in between leaves a
        malformed job in ``rq:wip``, where RQ's abandoned-job cleanup (every worker's maintenance,
        every ``rq info``) raises on it at every pass.  Past their deadline, such jobs get the
        same repairs their failure would have written, and RQ's own cleanup then fails them.
        """
        now = epoch_float(utcnow())
        repaired: list[str] = []
        for q in queues:
            members: list[bytes] = await self.redis.zrangebyscore(self.keys.started(q), "-inf", now)  # type: ignore[assignment]
            for member in members:
                job_id = member.decode().rpartition(":")[0]
                try:
                    raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[assignment]
                except ResponseError:
                    continue  # not a hash (someone overwrote the key): nothing of RQ's to repair
                if not raw:
                    continue
                try:
                    parse_job_hash(job_id, raw)
                except MalformedJobError as exc:
                    if exc.repairs:
                        await self.redis.hset(self.keys.job(job_id), mapping=exc.repairs)  # type: ignore[arg-type]
                        repaired.append(job_id)
        return repaired

    # -- worker registration ---------------------------------------------------
    async def register_birth(self, info: WorkerInfo) -> None:
        keys = self.keys
        key = keys.worker(info.name)
        exists, (death, pid, host) = await asyncio.gather(
            self.redis.exists(key), self.redis.hmget(key, ["death", "pid", "hostname"])
        )
        # Our own earlier registration whose reply was lost (this process, this host) is no clash.
        ours = pid == str(os.getpid()).encode() and host == socket.gethostname().encode()
        if exists and death is None and not ours:
            raise WorkerNameTaken(
                f"there is already an active worker named {info.name!r}; pick another --name or wait for it to exit"
            )
        now = format_utc(utcnow())
        ip = await self._ip_address()
        mapping: dict[str | bytes, str | bytes | int | float] = {
            "birth": now,
            "last_heartbeat": now,
            "queues": ",".join(info.queues),
            "pid": str(os.getpid()),
            "hostname": socket.gethostname(),
            "ip_address": ip,
            "version": registered_version(info.concurrency),
            "python_version": sys.version,
            "state": "started",
            "successful_job_count": "0",
            "failed_job_count": "0",
            "total_working_time": "0",
        }
        if info.concurrency:
            mapping["concurrency"] = str(info.concurrency)  # an extra field: stock readers ignore it
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
            pipe.sadd(keys.workers, key)
            for q in info.queues:
                pipe.sadd(keys.workers_of_queue(q), key)
            pipe.expire(key, info.ttl)
            await pipe.execute()

    async def reregister(self, info: WorkerInfo) -> None:
        """The worker key expired under us (e.g. a long Redis outage): write it again."""
        await self.redis.delete(self.keys.worker(info.name))
        await self.register_birth(info)

    async def register_death(self, queues: Sequence[str]) -> None:
        keys = self.keys
        key = keys.worker(self.worker_name)
        answered, self._answered = self._answered, []
        async with self.redis.pipeline(transaction=True) as pipe:
            if answered:
                pipe.delete(*answered)  # claim records no longer needed (the rest expire on their own)
            pipe.srem(keys.workers, key)
            for q in queues:
                pipe.srem(keys.workers_of_queue(q), key)
            pipe.hset(key, "death", format_utc(utcnow()))
            pipe.hdel(key, "current_job")
            pipe.expire(key, 60)
            pipe.delete(keys.worker_executions(self.worker_name))  # as RQ 3's death (harmless to 2.12)
            await pipe.execute()

    @staticmethod
    async def bury(
        redis: Redis, worker_name: str, queues: Sequence[str], pid: int, *, keys: Keys = DEFAULT
    ) -> bool:
        """Register the death of worker ``worker_name`` whose process ``pid`` is known to be gone.

        Only if its hash still names that pid and has no ``death``: what a stock
        worker's own death registration writes (out of the sets, ``death``, TTL 60),
        so the name can be taken again at once. Its running jobs stay in the
        StartedJobRegistry for RQ's abandoned-job maintenance, as for any crash.
        """
        key = keys.worker(worker_name)
        reply = await redis.eval(
            _script("bury.lua"),
            3 + len(queues),
            key,
            keys.workers,
            keys.worker_executions(worker_name),
            *[keys.workers_of_queue(q) for q in queues],
            str(pid),
            format_utc(utcnow()),
        )
        return bool(reply)

    async def set_state(self, state: str, *, current_job: str | bool | None = False) -> None:
        """Set ``state``; ``current_job`` = id to set, None to clear, False to leave alone."""
        key = self.keys.worker(self.worker_name)
        if current_job is False:
            await self.redis.hset(key, "state", state)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, "state", state)
            if current_job is None:
                pipe.hdel(key, "current_job")
            else:
                pipe.hset(key, "current_job", str(current_job))
            await pipe.execute()

    async def mark_shutdown_requested(self) -> None:
        await self.redis.hset(self.keys.worker(self.worker_name), "shutdown_requested_date", format_utc(utcnow()))

    async def _ip_address(self) -> str:
        try:
            info = await self.redis.execute_command("CLIENT", "INFO")  # type: ignore[no-untyped-call]
        except Exception:
            return "unknown"
        if isinstance(info, dict):
            addr = info.get("addr") or info.get(b"addr")
            return addr.decode() if isinstance(addr, bytes) else str(addr or "unknown")
        text = info.decode() if isinstance(info, bytes) else str(info)
        for part in text.split():
            if part.startswith("addr="):
                return part[5:]
        return "unknown"
