"""Shared helpers for the compat tests: worker kinds, launching, RQ-side checks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
import rq
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.worker import Worker

from tests.testsupport.workers import (
    WorkerProcess,
    run_asyncjobs_worker,
    run_rq_cli,
    run_rq_worker,
    run_rq_worker_with_asyncjobs_class,
    wait_for,
)

#: The installed RQ's major: the compat suite runs with RQ 2.12 or RQ 3 installed (producers, readers
#: and stock workers all of that version), and a few expectations differ between the two.
RQ_MAJOR = int(rq.__version__.split(".", 1)[0])

STOCK = "stock"
ASYNCJOBS = "asyncjobs"
SIMPLE_WORKER = "rq.worker.SimpleWorker"
FORKING_WORKER = "rq.worker.Worker"


@dataclass(frozen=True)
class WorkerKind:
    name: str

    @property
    def is_stock(self) -> bool:
        return self.name == STOCK

    def __str__(self) -> str:
        return self.name


def unique_name(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Launcher:
    """Starts workers of a given kind and guarantees they are stopped at teardown."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self.procs: list[WorkerProcess] = []

    def start(
        self,
        kind: WorkerKind,
        queues: str | Iterable[str],
        *args: str,
        concurrency: int | None = None,
        stock_class: str = SIMPLE_WORKER,
        env: dict[str, str] | None = None,
        url: str | None = None,
    ) -> WorkerProcess:
        """Start a worker.  ``concurrency`` applies to asyncjobs only (stock runs one job at a time);
        ``env`` is added to its environment (e.g. ``RQ_KEY_PREFIX``), ``url`` replaces the test's Redis."""
        url = url or self.url
        if kind.is_stock:
            proc = run_rq_worker(url, queues, *args, worker_class=stock_class, env=env)
        elif kind.name == ASYNCJOBS:
            extra = list(args)
            if concurrency is not None:
                extra += ["--concurrency", str(concurrency)]
            proc = run_asyncjobs_worker(url, queues, *extra, env=env)
        elif kind.name == "rq-asyncjobs-class":
            proc = run_rq_worker_with_asyncjobs_class(url, queues, *args, env=env)
        else:  # pragma: no cover
            raise ValueError(f"unknown worker kind {kind.name!r}")
        self.procs.append(proc)
        return proc

    def burst(
        self,
        kind: WorkerKind,
        queues: str | Iterable[str],
        *args: str,
        timeout: float = 60.0,
        expect_rc: int | None = 0,
        **kw: Any,
    ) -> WorkerProcess:
        """Run a burst worker to completion; check its exit code (None = any)."""
        proc = self.start(kind, queues, "--burst", *args, **kw)
        rc = proc.wait(timeout)
        if expect_rc is not None:
            assert rc == expect_rc, (
                f"{kind} worker exited {rc}, expected {expect_rc}; output:\n{proc.output()}"
            )
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


def fetch(conn: redis.Redis, job_id: str, serializer: Any = None) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=serializer)


def status_of(conn: redis.Redis, job_id: str) -> str | None:
    raw: bytes | None = conn.hget(f"rq:job:{job_id}", "status")  # type: ignore[assignment]
    return raw.decode() if raw is not None else None


def wait_status(
    conn: redis.Redis, job_id: str, *statuses: str, timeout: float = 30.0, proc: WorkerProcess | None = None
) -> str:
    def check() -> str | None:
        st = status_of(conn, job_id)
        return st if st in statuses else None

    def msg() -> str:
        out = f"job {job_id} status in {statuses} (now {status_of(conn, job_id)!r})"
        if proc is not None:
            out += f"\nworker output:\n{proc.output()}"
        return out

    return str(wait_for(check, timeout, message=msg))


def wait_held(
    conn: redis.Redis, count: int, timeout: float = 30.0, proc: WorkerProcess | None = None
) -> list[bytes]:
    """Wait until ``count`` hold jobs have started."""

    def msg() -> str:
        out = f"{count} held jobs started (now {conn.lrange('held:started', 0, -1)!r})"
        if proc is not None:
            out += f"\nworker output:\n{proc.output()}"
        return out

    def check() -> list[bytes] | None:
        started: list[bytes] = conn.lrange("held:started", 0, -1)  # type: ignore[assignment]
        return started if len(started) >= count else None

    return wait_for(check, timeout, message=msg)


def release(conn: redis.Redis, *names: str) -> None:
    for name in names:
        conn.set(f"release:{name}", "1")


def latest(conn: redis.Redis, job_id: str, serializer: Any = None) -> Result | None:
    """Latest Result via RQ, without Job.fetch (works even if the hash is malformed or gone)."""
    return Job(job_id, connection=conn, serializer=serializer).latest_result()


def worker_hash(conn: redis.Redis, name: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = conn.hgetall(f"rq:worker:{name}")  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def find_worker(conn: redis.Redis, name: str) -> Worker | None:
    for w in Worker.all(connection=conn):
        if w.name == name:
            return w  # type: ignore[return-value]
    return None


def rq_info(url: str, *args: str) -> str:
    res = run_rq_cli("info", "-u", url, *args)
    assert res.returncode == 0, f"rq info failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout


def records(conn: redis.Redis, key: str) -> list[str]:
    values: list[bytes] = conn.lrange(key, 0, -1)  # type: ignore[assignment]
    return [v.decode() for v in values]


def queue(conn: redis.Redis, name: str = "default", **kw: Any) -> Queue:
    return Queue(name, connection=conn, **kw)


__all__ = [
    "ASYNCJOBS",
    "FORKING_WORKER",
    "RQ_MAJOR",
    "SIMPLE_WORKER",
    "STOCK",
    "Launcher",
    "WorkerKind",
    "fetch",
    "find_worker",
    "latest",
    "queue",
    "records",
    "release",
    "rq_info",
    "status_of",
    "unique_name",
    "wait_held",
    "wait_status",
    "worker_hash",
]
