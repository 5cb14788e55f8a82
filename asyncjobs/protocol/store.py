"""Async store on redis.asyncio speaking RQ 2.12's format.

Every multi-key transition is one Lua script call, batched across jobs:
claiming N jobs (pop + start), finishing N jobs (results, registries, TTLs,
dependents, worker counters) and heart-beating every running execution each
cost one round trip whatever N is.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from asyncjobs.protocol import keys
from asyncjobs.protocol.codec import normalize_hash
from asyncjobs.protocol.timeutil import epoch_float, epoch_int, format_utc, utcnow

RQ_VERSION = "2.12.0"


def _script(name: str) -> str:
    return resources.files("asyncjobs.protocol").joinpath("lua", name).read_text("utf-8")


def _exchange_script() -> str:
    """finish.lua then claim.lua in one atomic call: outcomes are stored (dependents queued)
    before anything is popped, in a single round trip. Each file becomes a function whose
    ``ARGV`` parameter shadows the global, so both run unchanged."""
    return (
        "local function finish(ARGV)\n" + _script("finish.lua") + "\nend\n"
        "local function claim(ARGV)\n" + _script("claim.lua") + "\nend\n"
        "if ARGV[1] ~= '' then finish({ARGV[1]}) end\n"
        "local rest = {}\n"
        "for i = 2, #ARGV do rest[i - 1] = ARGV[i] end\n"
        "return claim(rest)\n"
    )


@dataclass(frozen=True, slots=True)
class Outcomes:
    """End-of-execution transitions to store together, with the worker's counters and state."""

    transitions: Sequence[Mapping[str, Any]]
    ok: int = 0
    failed: int = 0
    working_time: float = 0.0
    state: str | None = None  # worker state to write ("busy"/"idle"), with current_job below
    current_job: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job popped and marked started; ``raw`` is its hash before the start write."""

    queue: str
    job_id: str
    execution_id: str
    raw: Mapping[str, bytes]
    started_at: datetime


@dataclass(frozen=True, slots=True)
class ClaimResult:
    jobs: list[Claimed] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    suspended: bool = False


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
    """The worker hash's ``version``: RQ's, with asyncjobs (and its concurrency) as a PEP 440 local
    label, e.g. ``2.12.0+asyncjobs.0.1.0.c50``. Stock readers store it as text (``Worker.refresh``)
    and rq-dashboard shows it as "RQ <version>"; anything parsing it as a version still gets 2.12.0."""
    from asyncjobs import __version__

    label = f"asyncjobs.{__version__}" + (f".c{concurrency}" if concurrency else "")
    return f"{RQ_VERSION}+{label}"


class WorkerNameTaken(RuntimeError):
    pass


_BURY = """
local key = KEYS[1]
if redis.call('HGET', key, 'pid') ~= ARGV[1] or redis.call('HEXISTS', key, 'death') == 1 then
  return 0
end
redis.call('SREM', 'rq:workers', key)
for i = 2, #KEYS do redis.call('SREM', KEYS[i], key) end
redis.call('HSET', key, 'death', ARGV[2])
redis.call('HDEL', key, 'current_job')
redis.call('EXPIRE', key, 60)
return 1
"""


class RedisStore:
    """RQ-format operations for one worker identity."""

    def __init__(self, redis: Redis, worker_name: str, *, heartbeat_ttl: int = 90) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self.heartbeat_ttl = heartbeat_ttl
        self._claim: AsyncScript = redis.register_script(_script("claim.lua"))
        self._finish: AsyncScript = redis.register_script(_script("finish.lua"))
        self._heartbeat: AsyncScript = redis.register_script(_script("heartbeat.lua"))
        self._exchange: AsyncScript = redis.register_script(_exchange_script())

    # -- timing helpers -------------------------------------------------
    def _start_args(self, now: datetime) -> list[str]:
        ts = epoch_int(now)
        hb = self.heartbeat_ttl
        return [
            self.worker_name, epoch_float(now), format_utc(now),
            str(ts + hb), str(hb), str(ts + hb + 60), str(hb + 60),
        ]

    # -- dequeue ----------------------------------------------------------
    async def claim(self, queues: Sequence[str], count: int, execution_ids: Sequence[str]) -> ClaimResult:
        """Pop up to ``count`` ids in queue order and mark them started atomically."""
        return await self.exchange(None, queues, count, execution_ids)

    async def exchange(
        self, outcomes: Outcomes | None, queues: Sequence[str], count: int, execution_ids: Sequence[str]
    ) -> ClaimResult:
        """Store ``outcomes`` (if any), then claim up to ``count`` jobs: one atomic round trip."""
        now = utcnow()
        args = [*self._start_args(now), str(count), "pop", str(len(queues)), *queues, *execution_ids[:count]]
        if outcomes is None or not outcomes.transitions:
            reply = await self._claim(args=args)
        else:
            reply = await self._exchange(args=[self._finish_payload(outcomes, now), *args])
        return self._parse_claim(reply, now)

    async def block_move(self, queue: str, timeout: float) -> str | None:
        """BLMOVE one id into the queue's intermediate list (stock's single-queue dequeue)."""
        value = await self.redis.blmove(
            keys.queue(queue), keys.intermediate(queue), timeout, "LEFT", "RIGHT"  # type: ignore[arg-type]
        )
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def claim_moved(self, queue: str, job_id: str, execution_id: str) -> ClaimResult:
        now = utcnow()
        args = [*self._start_args(now), "1", "moved", "1", queue, job_id, execution_id]
        reply = await self._claim(args=args)
        return self._parse_claim(reply, now)

    @staticmethod
    def _parse_claim(reply: Any, now: datetime) -> ClaimResult:
        suspended, claimed, dropped = reply
        jobs: list[Claimed] = []
        for q, jid, eid, flat in claimed:
            pairs = dict(zip(flat[0::2], flat[1::2], strict=True))
            jobs.append(Claimed(q.decode(), jid.decode(), eid.decode(), normalize_hash(pairs), now))
        return ClaimResult(jobs, [d.decode() for d in dropped], bool(suspended))

    # -- completion --------------------------------------------------------
    async def finish(self, outcomes: Outcomes) -> None:
        if outcomes.transitions:
            await self._finish(args=[self._finish_payload(outcomes, utcnow())])

    def _finish_payload(self, outcomes: Outcomes, now: datetime) -> str:
        payload: dict[str, Any] = {
            "worker": self.worker_name,
            "now": str(epoch_int(now)),
            "now_ts": format_utc(now),
            "ok": outcomes.ok,
            "failed": outcomes.failed,
            "working_time": f"{outcomes.working_time:.6f}",
            "jobs": list(outcomes.transitions),
        }
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
        alive = await self._heartbeat(args=args)
        return bool(alive)

    # -- worker registration ---------------------------------------------------
    async def register_birth(self, info: WorkerInfo) -> None:
        key = keys.worker(info.name)
        existing = await self.redis.hget(key, "death")
        if await self.redis.exists(key) and existing is None:
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
            pipe.sadd(keys.WORKERS, key)
            for q in info.queues:
                pipe.sadd(keys.workers_of_queue(q), key)
            pipe.expire(key, info.ttl)
            await pipe.execute()

    async def reregister(self, info: WorkerInfo) -> None:
        """The worker key expired under us (e.g. a long Redis outage): write it again."""
        await self.redis.delete(keys.worker(info.name))
        await self.register_birth(info)

    async def register_death(self, queues: Sequence[str]) -> None:
        key = keys.worker(self.worker_name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.WORKERS, key)
            for q in queues:
                pipe.srem(keys.workers_of_queue(q), key)
            pipe.hset(key, "death", format_utc(utcnow()))
            pipe.hdel(key, "current_job")
            pipe.expire(key, 60)
            await pipe.execute()

    @staticmethod
    async def bury(redis: Redis, worker_name: str, queues: Sequence[str], pid: int) -> bool:
        """Register the death of worker ``worker_name`` whose process ``pid`` is known to be gone.

        Only if its hash still names that pid and has no ``death``: what a stock
        worker's own death registration writes (out of the sets, ``death``, TTL 60),
        so the name can be taken again at once. Its running jobs stay in the
        StartedJobRegistry for RQ's abandoned-job maintenance, as for any crash.
        """
        key = keys.worker(worker_name)
        reply = await redis.eval(
            _BURY,
            1 + len(queues),
            key,
            *[keys.workers_of_queue(q) for q in queues],
            str(pid),
            format_utc(utcnow()),
        )
        return bool(reply)

    async def set_state(self, state: str, *, current_job: str | bool | None = False) -> None:
        """Set ``state``; ``current_job`` = id to set, None to clear, False to leave alone."""
        key = keys.worker(self.worker_name)
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

    async def set_current_job(self, job_id: str | None) -> None:
        key = keys.worker(self.worker_name)
        if job_id is None:
            await self.redis.hdel(key, "current_job")
        else:
            await self.redis.hset(key, "current_job", job_id)

    async def mark_shutdown_requested(self) -> None:
        await self.redis.hset(keys.worker(self.worker_name), "shutdown_requested_date", format_utc(utcnow()))

    async def is_suspended(self) -> bool:
        return bool(await self.redis.exists(keys.SUSPENDED))

    async def save_meta(self, job_id: str, raw_meta: bytes) -> None:
        await self.redis.hset(keys.job(job_id), "meta", raw_meta)

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
