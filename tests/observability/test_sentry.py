"""Sentry through asyncjobs: the real SDK with a capturing transport, producers enqueueing with
stock RQ patched by Sentry's own RQ integration, jobs run by a real worker against real Redis.

Runs against whichever sentry-sdk is installed (CI runs it on 2.x and 3.x): on 3.x, and on 2.x with
``trace_lifecycle="stream"``, a job is a streamed segment span (``queue.process``); on 2.x otherwise
a transaction (``queue.task.rq``), as Sentry's own RqIntegration makes for ``rq worker``."""

from __future__ import annotations

import logging
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
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.rq import RqIntegration
from sentry_sdk.scope import Scope
from sentry_sdk.transport import Transport

from asyncjobs.observability import _sentry_compat as compat
from tests.testsupport.sentry_server import SentryIngest
from tests.testsupport.workers import PROJECT_ROOT, WorkerProcess, asyncjobs_worker_command, rq_command
from tests.worker.conftest import eventually

SDK_MAJOR = compat.parse_version(sentry_sdk.VERSION)[0]
#: 2.x releases with span streaming run these tests both ways
LIFECYCLES = ["stream"] if SDK_MAJOR >= 3 else (
    ["static", "stream"] if compat.Sdk2().required_api().get("sentry_sdk.traces.start_span") else ["static"])

J = "tests.observability.jobs"


class CapturingTransport(Transport):
    """Keeps every envelope the SDK would send (the SDK's own serialisation, no network)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []
        self.lock = threading.Lock()
        self.streaming = SDK_MAJOR >= 3

    def capture_envelope(self, envelope: Envelope) -> None:
        with self.lock:
            self.envelopes.append(envelope)

    def items(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [item.payload.json for env in self.envelopes for item in env.items
                    if item.type == kind and item.payload.json is not None]


@pytest.fixture
def sentry_init() -> Iterator[Any]:
    """``sentry_init(streaming, **options)``: the real SDK with a capturing transport, closed after the test."""

    def init(streaming: bool = SDK_MAJOR >= 3, integrations: list[Any] | None = None,
             **options: Any) -> CapturingTransport:
        captured = CapturingTransport()
        captured.streaming = streaming
        if streaming and SDK_MAJOR == 2:
            options["trace_lifecycle"] = "stream"
        sentry_sdk.init(
            dsn="https://public@sentry.example.invalid/1",
            transport=captured,
            # Logging events on (3.x has them off by default): the worker's "job failed" line must not
            # become a second event.
            integrations=integrations or [RqIntegration(), LoggingIntegration(event_level=logging.ERROR)],
            **{"traces_sample_rate": 1.0, **options},
        )
        return captured

    try:
        yield init
    finally:
        client = sentry_sdk.get_client()
        client.close()
        Scope.get_global_scope().set_client(None)  # back to a non-recording client


@pytest.fixture(params=LIFECYCLES)
def transport(request: pytest.FixtureRequest, sentry_init: Any) -> CapturingTransport:
    return sentry_init(streaming=request.param == "stream")  # type: ignore[no-any-return]


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


def enqueue_in_a_trace(q: Queue, func: str, *args: Any, **kw: Any) -> tuple[Any, str]:
    """Enqueue from inside a producer's request (its own scope and trace): returns the job and trace id."""
    assert sentry_sdk.get_client().is_active()
    with sentry_sdk.isolation_scope():
        if compat.SDK.streaming():
            from sentry_sdk import traces

            traces.new_trace()  # what a web framework integration does per request
            span: Any = traces.start_span(name="POST /signup", attributes={"sentry.op": "http.server"})
        else:
            span = sentry_sdk.start_transaction(name="POST /signup", op="http.server")  # type: ignore[attr-defined, unused-ignore]
        with span:
            job = q.enqueue(func, *args, **kw)
    assert job.meta["_sentry_trace_headers"]["sentry-trace"].startswith(span.trace_id)
    return job, span.trace_id


def job_segments(transport: Any, streaming: bool) -> list[dict[str, Any]]:
    """Each job execution's top span: a streamed segment span, or a 2.x transaction."""
    if streaming:
        spans = [s for payload in transport.items("span") for s in payload.get("items", [])]
        return [{"trace_id": s["trace_id"], "name": s["name"], "status": s["status"],
                 "attributes": {k: v.get("value") for k, v in (s.get("attributes") or {}).items()}}
                for s in spans
                if s.get("is_segment") and (s.get("attributes") or {}).get("sentry.op", {}).get("value") == "queue.process"]
    return [{"trace_id": t["contexts"]["trace"]["trace_id"], "name": t["transaction"],
             "status": t["contexts"]["trace"].get("status"), "attributes": t["contexts"]["trace"].get("data", {})}
            for t in transport.items("transaction") if t["contexts"]["trace"].get("op") == "queue.task.rq"]


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
        assert {k: exc["mechanism"][k] for k in ("type", "handled")} == {"type": "rq", "handled": False}
    assert job_events(transport, fine.id) == []
    # Every error event is one of those three: the worker's "job failed" log lines are not reported again.
    assert len(transport.items("event")) == 3, [e.get("logentry") or e.get("exception") for e in transport.items("event")]

    # Each job execution is a span (3.x) or transaction (2.x) in its producer's trace (six executions:
    # 1 + 1 + 3 + 1).
    error = "error" if transport.streaming else "internal_error"
    segments = job_segments(transport, transport.streaming)
    assert len(segments) == 6, segments
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for segment in segments:
        by_trace.setdefault(segment["trace_id"], []).append(segment)
    assert len(by_trace[retried_trace]) == 3
    assert [t["name"] for t in by_trace[fine_trace]] == [f"{J}.ok"]
    assert by_trace[fine_trace][0]["status"] == "ok"
    assert by_trace[sync_trace][0]["status"] == error
    assert by_trace[async_trace][0]["status"] == error
    attributes = by_trace[fine_trace][0]["attributes"]
    if transport.streaming:  # "ok"/"error" only: the outcome itself is an attribute
        assert by_trace[sync_trace][0]["attributes"]["rq.job.status"] == "failed"
        assert sorted(t["attributes"]["rq.job.status"] for t in by_trace[retried_trace]) == ["failed", "retried", "retried"]
    if transport.streaming or "messaging.destination.name" in attributes:  # early 2.x sent no transaction data
        assert attributes["messaging.destination.name"] == "mail" and attributes["messaging.message.id"] == fine.id
    assert [r.getMessage() for r in caplog.records if r.name == "asyncjobs.worker.hooks"] == []
    # The worker's failed-job line names the trace the event is in, to find one from the other.
    for job, trace_id in ((sync_job, sync_trace), (async_job, async_trace), (retried, retried_trace)):
        (line,) = failed_lines(caplog, job.id)
        assert line.trace_id == trace_id  # type: ignore[attr-defined]  # the JSON line's trace_id
        assert line.getMessage().endswith(f"(trace {trace_id})")  # the text line


def failed_lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "asyncjobs.worker" and getattr(r, "job_id", None) == job_id and getattr(r, "status", None) == "failed"]


@pytest.mark.parametrize("runner", ["asyncjobs-worker", "rq worker -w"])
def test_sentry_set_up_as_sentrys_rq_docs_say(
    runner: str, redis_url: str, sync_redis: redis.Redis, tmp_path: Path, transport: CapturingTransport
) -> None:
    """Sentry's RQ docs: ``sentry_sdk.init(..., integrations=[RqIntegration()])`` in a settings module
    given with ``-c``.  The worker process sends over HTTP to a real endpoint, nothing else to do."""
    lifecycle = ', trace_lifecycle="stream"' if transport.streaming and SDK_MAJOR == 2 else ""
    with SentryIngest() as ingest:
        (tmp_path / "sentry_rq_settings.py").write_text(textwrap.dedent(f"""
            import sentry_sdk
            from sentry_sdk.integrations.rq import RqIntegration

            REDIS_URL = {redis_url!r}
            sentry_sdk.init(dsn={ingest.dsn!r}, integrations=[RqIntegration()], traces_sample_rate=1.0{lifecycle})
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
        segments = job_segments(ingest, transport.streaming)
        assert [(t["trace_id"], t["name"]) for t in segments] == [(trace_id, f"{J}.boom")], segments


@pytest.mark.filterwarnings("ignore:The send_default_pii option is deprecated:DeprecationWarning")
async def test_job_arguments_only_on_opt_in(sync_redis: redis.Redis, start_worker, sentry_init: Any) -> None:
    """Job arguments may hold personal data: an event carries them only when the operator opted in,
    which is ``send_default_pii=True`` on 2.x.  3.x has no such option, and its ``data_collection``
    collects queue arguments by default, so an explicit ``{"queues": True}`` cannot be told from the
    default: asyncjobs leaves them out on 3.x whatever it says.  (With every trace sampled out, too:
    errors are reported without tracing.)"""
    if SDK_MAJOR >= 3:
        transport = sentry_init(data_collection={"queues": True}, traces_sample_rate=0.0)
    else:
        transport = sentry_init(send_default_pii=True, traces_sample_rate=0.0)
    q = Queue("pii", connection=sync_redis)
    job = q.enqueue(f"{J}.boom", "+353871234567")
    await start_worker(queues=("pii",))
    await eventually(lambda: status(sync_redis, job.id) == "failed", what="job failed")
    sentry_sdk.flush()
    await eventually(lambda: job_events(transport, job.id), what="the event")
    [event] = job_events(transport, job.id)
    if SDK_MAJOR >= 3:
        assert event["extra"]["rq-job"]["args"] == event["extra"]["rq-job"]["kwargs"] == "[Filtered]"
    else:
        assert event["extra"]["rq-job"]["args"] == ["+353871234567"]
    assert job_segments(transport, transport.streaming) == []  # sampled out


@pytest.mark.skipif(not compat.required_api().get("sentry_sdk.integrations.rq._start_check_in"),
                    reason="this sentry-sdk's RqIntegration has no cron monitoring")
async def test_cron_check_ins_as_rq_integration_sends_them(
    sync_redis: redis.Redis, start_worker, sentry_init: Any
) -> None:
    """``RqIntegration(monitor_cron_jobs=True)``: a job rq-scheduler repeats (``interval`` or
    ``cron_string`` in its meta) reports an ``in_progress`` check-in and then ``ok`` or ``error``."""
    transport = sentry_init(integrations=[RqIntegration(monitor_cron_jobs=True)])
    q = Queue("cron", connection=sync_redis)
    nightly = q.enqueue(f"{J}.ok", 1, job_id="nightly-report", meta={"interval": 3600})
    broken = q.enqueue(f"{J}.boom", "cron kaput", job_id="hourly-sync", meta={"interval": 3600})
    plain = q.enqueue(f"{J}.ok", 2)  # not a scheduled job: no check-in
    await start_worker(queues=("cron",))
    await eventually(lambda: all(status(sync_redis, j.id) in ("finished", "failed") for j in (nightly, broken, plain)),
                     what="jobs ended")
    sentry_sdk.flush()
    await eventually(lambda: len(transport.items("check_in")) >= 4, what="check-ins")
    seen = sorted((c["monitor_slug"], c["status"]) for c in transport.items("check_in"))
    assert seen == [("hourly-sync", "error"), ("hourly-sync", "in_progress"),
                    ("nightly-report", "in_progress"), ("nightly-report", "ok")]
    by_slug = {c["monitor_slug"]: c for c in transport.items("check_in") if c["status"] != "in_progress"}
    assert by_slug["nightly-report"]["monitor_config"]["schedule"] == {"type": "interval", "value": 1, "unit": "hour"}
    assert by_slug["nightly-report"]["duration"] >= 0


async def test_no_phone_number_or_code_in_the_event_of_a_failed_sms(
    sync_redis: redis.Redis, start_worker, sentry_init: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18 item 7: with ``send_default_pii`` off, the event carried RQ's description (number and
    code), the raising frames' locals, and an error echoing the full number; a number with a trailing
    newline passed validation (``re.match`` with ``$``) and went to the provider."""
    import json

    from asyncjobs.delivery.settings import reload_settings

    monkeypatch.setenv("SMS_PROVIDER", "console")
    reload_settings()
    transport = sentry_init(traces_sample_rate=0.0)
    q = Queue("sms", connection=sync_redis)
    job = q.enqueue("asyncjobs.tasks.send_sms", "+353861112223\n", "Your code is 482913")
    await start_worker(queues=("sms",))
    await eventually(lambda: status(sync_redis, job.id) == "failed", what="job failed")
    sentry_sdk.flush()
    await eventually(lambda: job_events(transport, job.id), what="the event")
    [event] = job_events(transport, job.id)
    text = json.dumps(event)
    assert "861112223" not in text and "482913" not in text, text
    assert event["extra"]["rq-job"]["description"].startswith("asyncjobs.tasks.send_sms(to=+353"), event["extra"]
    assert "InvalidPhoneNumberError" in text
