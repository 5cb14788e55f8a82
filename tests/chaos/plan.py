"""What a scenario enqueues: a seeded mix of job kinds, and the producer that enqueues them.

Each job's id is its ledger key and encodes its kind, so the checker knows what
to expect of it from RQ's semantics alone:

=============  ==============================================================
ok             finishes (async or sync, 0-200 ms; some async ones spend their
               time awaiting Redis round trips)
retry          ``Retry(max=m)``, fails its first ``f`` attempts (f may exceed m)
boom           raises, no retry: failed with the exception's traceback
timeout        would run 30 s, past its 1 s ``job_timeout``: failed with JobTimeoutException
long           runs 3 s (15 s in the storms, where a stop-job is sent as soon as it runs)
child          depends on an earlier ``ok`` job (``allow_failure=True``)
cancel         runs 0.3 s; the storms cancel some while they are queued
probe          enqueued after recovery: all must run at once (every slot free)
=============  ==============================================================
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.job import Dependency, Retry

from tests.chaos.cluster import QUEUES

J = "tests.chaos.jobs"
RESULT_TTL = 24 * 3600  # finished jobs outlive the longest soak round
# A timeout job would run this long; its 1 s timeout must end it long before, even on a machine
# that stalls for seconds (seen on this shared 2-core box: every process frozen for 2.6 s).
TIMEOUT_JOB_SECONDS = 30.0


@dataclass
class JobSpec:
    id: str
    kind: str
    queue: str
    func: str
    kwargs: dict[str, Any]
    timeout: int | None = None
    max_retries: int = 0
    fail_first: int = 0
    parent: str | None = None
    rate_limit: tuple[str, int] | None = None  # RQ 3's RateLimit(key, concurrency)

    @property
    def is_async(self) -> bool:
        return self.func.startswith(f"{J}.async_")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, 0, {})}


DEFAULT_MIX: dict[str, float] = {
    "ok": 0.645, "retry": 0.14, "boom": 0.05, "timeout": 0.04, "long": 0.025, "child": 0.05, "cancel": 0.05,
}


@dataclass
class Plan:
    tag: str
    specs: list[JobSpec] = field(default_factory=list)

    def by_id(self) -> dict[str, JobSpec]:
        return {s.id: s for s in self.specs}


def make_plan(
    tag: str,
    n: int,
    rng: random.Random,
    mix: dict[str, float] | None = None,
    long_seconds: float = 3.0,
    rate_limits: dict[str, int] | None = None,
) -> Plan:
    """``rate_limits`` (RQ 3): {key: concurrency}; most jobs (not children) then get one of them."""
    mix = mix or DEFAULT_MIX
    kinds = list(mix)
    weights = [mix[k] for k in kinds]
    plan = Plan(tag)
    ok_ids: list[str] = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        if kind == "child" and not ok_ids:
            kind = "ok"
        jid = f"{tag}-{i:05d}-{kind}"
        queue = QUEUES[0] if rng.random() < 0.3 else QUEUES[1]
        use_async = rng.random() < 0.55
        func = f"{J}.async_work" if use_async else f"{J}.sync_work"
        kwargs: dict[str, Any] = {"key": jid}
        spec = JobSpec(jid, kind, queue, func, kwargs)
        if kind == "ok":
            kwargs["seconds"] = round(rng.uniform(0, 0.2 if use_async else 0.1), 3)
            if use_async and rng.random() < 0.3:
                kwargs["ping"] = True
            ok_ids.append(jid)
        elif kind == "retry":
            m = rng.randint(1, 3)
            f = rng.randint(0, m + 1)
            spec.max_retries, spec.fail_first = m, f
            kwargs.update(seconds=0.02, fail_first=f, max_retries=m)
        elif kind == "boom":
            kwargs.update(seconds=0.01, fail_first=1)
        elif kind == "timeout":
            spec.timeout = 1
            kwargs["seconds"] = TIMEOUT_JOB_SECONDS
            if use_async and rng.random() < 0.5:
                kwargs["ping"] = True  # a timeout landing as a Redis round trip completes
        elif kind == "long":
            kwargs["seconds"] = long_seconds
            if use_async:
                kwargs["ping"] = True
        elif kind == "child":
            spec.parent = rng.choice(ok_ids[-200:])
            kwargs["seconds"] = 0.01
        elif kind == "cancel":
            queue = spec.queue = QUEUES[0]  # not shared with the stock worker (see checker)
            kwargs["seconds"] = 0.3
        if rate_limits and kind not in ("child", "cancel") and rng.random() < 0.7:
            key = rng.choice(sorted(rate_limits))
            spec.rate_limit = (key, rate_limits[key])
        plan.specs.append(spec)
    return plan


def probe_plan(tag: str, n: int, barrier: str) -> Plan:
    plan = Plan(tag)
    for i in range(n):
        func = f"{J}.async_probe" if i % 2 else f"{J}.sync_probe"
        jid = f"{tag}-{i:05d}-probe"
        plan.specs.append(JobSpec(jid, "probe", QUEUES[0], func, {"key": jid, "barrier": barrier, "n": n}))
    return plan


def enqueue(conn: redis.Redis, specs: list[JobSpec]) -> None:
    """Enqueue a batch: plain jobs in one MULTI/EXEC per queue, children one by one (RQ's API)."""
    plain: dict[str, list[Any]] = {}
    for s in specs:
        if s.rate_limit is not None:  # RQ 3 enqueues rate-limited jobs one by one (no pipeline)
            from rq.rate_limit import RateLimit

            Queue(s.queue, connection=conn).enqueue(
                s.func, kwargs=s.kwargs, job_timeout=s.timeout, job_id=s.id, result_ttl=RESULT_TTL,
                retry=Retry(max=s.max_retries) if s.max_retries else None, rate_limit=RateLimit(*s.rate_limit),
            )
        elif s.parent is None:
            plain.setdefault(s.queue, []).append(
                Queue.prepare_data(
                    s.func, kwargs=s.kwargs, timeout=s.timeout, job_id=s.id, result_ttl=RESULT_TTL,
                    retry=Retry(max=s.max_retries) if s.max_retries else None,
                )
            )
    for qname, datas in plain.items():
        Queue(qname, connection=conn).enqueue_many(datas)
    for s in specs:
        if s.parent is not None:
            Queue(s.queue, connection=conn).enqueue(
                s.func, kwargs=s.kwargs, job_id=s.id, result_ttl=RESULT_TTL,
                depends_on=Dependency(jobs=[s.parent], allow_failure=True),
            )


class Producer(threading.Thread):
    """Enqueues a plan in batches at a steady rate (a share up front), holding the cluster's
    Redis lock per batch so a scheduled Redis restart never cuts a batch in half."""

    def __init__(
        self,
        conn: redis.Redis,
        plan: Plan,
        lock: threading.Lock,
        *,
        seconds: float,
        upfront: float = 0.2,
        batch: int = 25,
        between_batches: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.conn = conn
        self.plan = plan
        self.lock = lock
        self.seconds = seconds
        self.upfront = upfront
        self.batch = batch
        self.between_batches = between_batches
        self.error: BaseException | None = None
        self.enqueued = 0

    def run(self) -> None:
        try:
            specs = self.plan.specs
            first = int(len(specs) * self.upfront)
            step = self.batch if self.between_batches is not None else 200
            with self.lock:
                for i in range(0, first, step):
                    enqueue(self.conn, specs[i : min(i + step, first)])
                    if self.between_batches is not None:
                        self.between_batches()
            self.enqueued = first
            rest = specs[first:]
            batches = [rest[i : i + self.batch] for i in range(0, len(rest), self.batch)]
            start = time.monotonic()
            for k, chunk in enumerate(batches):
                due = start + self.seconds * k / max(len(batches), 1)
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the load, not synchronising
                with self.lock:
                    enqueue(self.conn, chunk)
                    if self.between_batches is not None:
                        self.between_batches()
                self.enqueued += len(chunk)
        except BaseException as exc:
            self.error = exc
