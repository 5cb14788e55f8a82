"""Sentry through asyncjobs: the real SDK with a capturing transport, producers enqueueing with
stock RQ patched by Sentry's own RQ integration, jobs run by a real worker against real Redis."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sentry_sdk
from rq import Queue, Retry
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.rq import RqIntegration
from sentry_sdk.transport import Transport

from tests.testsupport.sentry_server import SentryIngest
from tests.testsupport.workers import PROJECT_ROOT, WorkerProcess, asyncjobs_worker_command, rq_command
from tests.worker.conftest import eventually

J = "tests.observability.jobs"


class CapturingTransport(Transport):
    """Keeps every envelope the SDK would send (the SDK's own serialisation, no network)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []
        self.lock = threading.Lock()

    def capture_envelope(self, envelope: Envelope) -> None:
        with self.lock:
            self.envelopes.append(envelope)

    def items(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [item.payload.json for env in self.envelopes for item in env.items
                    if item.type == kind and item.payload.json is not None]


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    captured = CapturingTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.example.invalid/1",
        transport=captured,
        integrations=[RqIntegration()],  # with the default ones (logging too: it must not report twice)
        traces_sample_rate=1.0,
    )
    try:
        yield captured
    finally:
        client = sentry_sdk.get_client()
        client.close()
        sentry_sdk.get_global_scope().set_client(None)  # back to a non-recording client


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


def enqueue_in_a_trace(q: Queue, func: str, *args: Any, **kw: Any) -> tuple[Any, str]:
    """Enqueue from inside a producer transaction (a web request, say): returns the job and trace id."""
    with sentry_sdk.start_transaction(name="POST /signup", op="http.server") as tx:
        job = q.enqueue(func, *args, **kw)
    assert job.meta["_sentry_trace_headers"]["sentry-trace"].startswith(tx.trace_id)
    return job, tx.trace_id


def job_events(transport: CapturingTransport, job_id: str) -> list[dict[str, Any]]:
    return [e for e in transport.items("event") if e.get("extra", {}).get("rq-job", {}).get("job_id") == job_id]


async def test_one_event_per_failed_job_with_the_producers_trace(
    sync_redis: redis.Redis, start_worker, transport: CapturingTransport, caplog: pytest.LogCaptureFixture
) -> None:
    q = Queue("mail", connection=sync_redis)
    sync_job, sync_trace = enqueue_in_a_trace(q, f"{J}.boom", "sync kaput")
    async_job, async_trace = enqueue_in_a_trace(q, f"{J}.aboom", "async kaput")
    retried, retried_trace = enqueue_in_a_trace(q, f"{J}.boom", "kaput each time", retry=Retry(max=2))
    fine, fine_trace = enqueue_in_a_trace(q, f"{J}.ok", 1)
    worker, _ = await start_worker(queues=("mail",), concurrency=4)  # no --hooks: Sentry's RqIntegration enables it
    jobs = (sync_job, async_job, retried, fine)
    await eventually(lambda: all(status(sync_redis, j.id) in ("failed", "finished") for j in jobs),
                     what="jobs ended")
    assert status(sync_redis, fine.id) == "finished"
    assert sync_redis.hget(f"rq:job:{retried.id}", "retries_left") == b"0"  # ran three times
    sentry_sdk.flush()

    for job, trace_id, text, func in (
        (sync_job, sync_trace, "sync kaput", f"{J}.boom"),
        (async_job, async_trace, "async kaput", f"{J}.aboom"),
        (retried, retried_trace, "kaput each time", f"{J}.boom"),  # only the last attempt, as stock
    ):
        events = job_events(transport, job.id)
        assert len(events) == 1, events
        event = events[0]
        assert event["contexts"]["trace"]["trace_id"] == trace_id
        rq_job = event["extra"]["rq-job"]
        assert rq_job["queue"] == "mail" and rq_job["func"] == func and rq_job["worker"] == worker.name
        assert rq_job["args"] == "[Filtered]"  # no arguments without send_default_pii
        exc = event["exception"]["values"][-1]
        assert exc["type"] == "ValueError" and exc["value"] == text
        assert exc["mechanism"] == {"type": "rq", "handled": False}
    assert job_events(transport, fine.id) == []
    # Every error event is one of those three: the worker's "job failed" log lines are not reported again.
    assert len(transport.items("event")) == 3, [e.get("logentry") or e.get("exception") for e in transport.items("event")]

    # Each job execution is a transaction in its producer's trace (5 executions: 1 + 1 + 3 + ... + 1).
    transactions = [t for t in transport.items("transaction") if t["contexts"]["trace"].get("op") == "queue.task.rq"]
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for t in transactions:
        by_trace.setdefault(t["contexts"]["trace"]["trace_id"], []).append(t)
    assert len(by_trace[retried_trace]) == 3
    assert [t["transaction"] for t in by_trace[fine_trace]] == [f"{J}.ok"]
    assert by_trace[fine_trace][0]["contexts"]["trace"]["status"] == "ok"
    assert by_trace[sync_trace][0]["contexts"]["trace"]["status"] == "internal_error"
    assert [r.getMessage() for r in caplog.records if r.name == "asyncjobs.worker.hooks"] == []


@pytest.mark.parametrize("runner", ["asyncjobs-worker", "rq worker -w"])
def test_sentry_set_up_as_sentrys_rq_docs_say(
    runner: str, redis_url: str, sync_redis: redis.Redis, tmp_path: Path, transport: CapturingTransport
) -> None:
    """Sentry's RQ docs: ``sentry_sdk.init(..., integrations=[RqIntegration()])`` in a settings module
    given with ``-c``.  The worker process sends over HTTP to a real endpoint, nothing else to do."""
    with SentryIngest() as ingest:
        (tmp_path / "sentry_rq_settings.py").write_text(textwrap.dedent(f"""
            import sentry_sdk
            from sentry_sdk.integrations.rq import RqIntegration

            REDIS_URL = {redis_url!r}
            sentry_sdk.init(dsn={ingest.dsn!r}, integrations=[RqIntegration()], traces_sample_rate=1.0)
        """))
        q = Queue("sentryq", connection=sync_redis)
        bad, trace_id = enqueue_in_a_trace(q, f"{J}.boom", "settings kaput")
        env = {"PYTHONPATH": f"{tmp_path}:{PROJECT_ROOT}"}
        if runner == "asyncjobs-worker":
            argv = [*asyncjobs_worker_command(), "-c", "sentry_rq_settings", "--burst", "sentryq"]
        else:
            argv = [*rq_command(), "worker", "-c", "sentry_rq_settings", "-w", "asyncjobs.AsyncWorker",
                    "--burst", "sentryq"]
        with WorkerProcess(argv, env=env) as worker:
            assert worker.wait(60) == 0, worker.output()  # the SDK flushes at exit
        assert status(sync_redis, bad.id) == "failed"
        events = ingest.items("event")
        assert len(events) == 1, events
        assert events[0]["contexts"]["trace"]["trace_id"] == trace_id
        assert events[0]["extra"]["rq-job"]["job_id"] == bad.id
        assert events[0]["exception"]["values"][-1]["value"] == "settings kaput"
