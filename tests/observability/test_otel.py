"""OpenTelemetry through asyncjobs: the real SDK with its in-memory exporter, producers enqueueing
with stock RQ instrumented by ``opentelemetry-instrumentation-rq``, jobs run by a real worker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rq import Queue, Retry

from tests.worker.conftest import eventually

J = "tests.observability.jobs"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not getattr(provider, "_asyncjobs_test", False):  # the global provider can be set once per process
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._asyncjobs_test = True  # type: ignore[attr-defined]
        trace.set_tracer_provider(provider)
    assert getattr(trace.get_tracer_provider(), "_asyncjobs_test", False), "another tracer provider is set"
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def instrumented() -> Iterator[None]:
    from opentelemetry_instrumentation_rq import RQInstrumentor
    from rq.job import Job

    if not hasattr(Job, "execute_success_callback"):
        # opentelemetry-instrumentation-rq (0.1.4, the newest) patches Job.execute_success_callback,
        # which RQ 3 removed: instrument() raises, for `rq worker` as for any process (README).
        pytest.skip("opentelemetry-instrumentation-rq cannot instrument RQ 3 (Job.execute_success_callback is gone)")
    RQInstrumentor().instrument()
    try:
        yield
    finally:
        RQInstrumentor().uninstrument()


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


def consumer_spans(exporter: InMemorySpanExporter, job_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans()
            if s.kind is trace.SpanKind.CONSUMER and (s.attributes or {}).get("rq.job.id") == job_id]


def no_hook_or_context_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage() for r in caplog.records
           if r.name.startswith(("asyncjobs.worker.hooks", "opentelemetry")) and r.levelno >= logging.WARNING]
    assert bad == []


async def test_each_job_is_a_span_child_of_the_producers_publish_span(
    sync_redis: redis.Redis, start_worker, exporter: InMemorySpanExporter, instrumented: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracer = trace.get_tracer("test-producer")
    q = Queue("reports", connection=sync_redis)
    with tracer.start_as_current_span("POST /reports") as request:
        ok = q.enqueue(f"{J}.ok", 3)
        bad = q.enqueue(f"{J}.aboom", "report kaput")
        retried = q.enqueue(f"{J}.boom", "flaky", retry=Retry(max=1))
    trace_id = request.get_span_context().trace_id
    assert "traceparent" in ok.meta  # where opentelemetry-instrumentation-rq propagates the context
    publish = {(s.attributes or {}).get("rq.job.id"): s for s in exporter.get_finished_spans()
               if s.kind is trace.SpanKind.PRODUCER}

    worker, _ = await start_worker(queues=("reports",), concurrency=3)  # enabled by the instrumentation
    await eventually(lambda: all(status(sync_redis, j.id) in ("finished", "failed") for j in (ok, bad, retried)),
                     what="jobs ended")

    for job in (ok, bad, retried):
        spans = consumer_spans(exporter, job.id)
        assert spans, f"no span for {job.id}"
        for span in spans:
            assert span.name == "consume reports"
            assert span.context.trace_id == trace_id
            assert span.parent is not None and span.parent.span_id == publish[job.id].context.span_id
            attrs = span.attributes or {}
            assert attrs["messaging.destination.name"] == "reports" and attrs["rq.job.function"] == job.func_name
            assert attrs["messaging.consumer.group.name"] == worker.name
    (ok_span,) = consumer_spans(exporter, ok.id)
    assert ok_span.attributes["rq.job.status"] == "finished"  # type: ignore[index]
    assert ok_span.status.status_code is trace.StatusCode.OK
    (bad_span,) = consumer_spans(exporter, bad.id)
    assert bad_span.attributes["rq.job.status"] == "failed"  # type: ignore[index]
    assert bad_span.status.status_code is trace.StatusCode.ERROR
    assert [e.attributes["exception.message"] for e in bad_span.events if e.name == "exception"] == ["report kaput"]  # type: ignore[index]
    attempts = sorted(consumer_spans(exporter, retried.id), key=lambda s: s.start_time or 0)
    assert [s.attributes["rq.job.status"] for s in attempts] == ["retried", "failed"]  # type: ignore[index]
    # The worker's failed-job line names the job's trace (JSON key and text alike).
    for job in (bad, retried):
        (line,) = [r for r in caplog.records if r.name == "asyncjobs.worker"
                   and getattr(r, "job_id", None) == job.id and getattr(r, "status", None) == "failed"]
        assert line.trace_id == trace.format_trace_id(trace_id)  # type: ignore[attr-defined]
        assert line.getMessage().endswith(f"(trace {trace.format_trace_id(trace_id)})")
    no_hook_or_context_errors(caplog)  # e.g. "Failed to detach context": before/after share a context


async def test_explicit_hooks_follow_w3c_context_in_job_meta(
    sync_redis: redis.Redis, start_worker, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the instrumentation: ``--hooks asyncjobs.observability.otel`` and a producer that
    propagates the context itself; spans the job creates are children of the job's span."""
    tracer = trace.get_tracer("test-producer")
    q = Queue("default", connection=sync_redis)
    with tracer.start_as_current_span("cron tick") as parent:
        meta: dict[str, Any] = {}
        propagate.inject(meta)
        job = q.enqueue(f"{J}.traced_child", meta=meta)
        sync_bad = q.enqueue(f"{J}.boom", "sync kaput", meta=meta)  # its hooks run on the job's thread
        async_bad = q.enqueue(f"{J}.aboom", "async kaput", meta=meta)
    await start_worker(hooks=("asyncjobs.observability.otel",))
    await eventually(lambda: status(sync_redis, job.id) == "finished", what="job finished")
    await eventually(lambda: {status(sync_redis, j.id) for j in (sync_bad, async_bad)} == {"failed"}, what="failed")
    trace_id = trace.format_trace_id(parent.get_span_context().trace_id)
    for bad in (sync_bad, async_bad):
        (line,) = [r for r in caplog.records if r.name == "asyncjobs.worker"
                   and getattr(r, "job_id", None) == bad.id and getattr(r, "status", None) == "failed"]
        assert line.trace_id == trace_id  # type: ignore[attr-defined]  # the JSON line's key
        assert line.getMessage().endswith(f"(trace {trace_id})")  # and the text line
    (span,) = consumer_spans(exporter, job.id)
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes["rq.job.status"] == "finished"  # type: ignore[index]
    (child,) = [s for s in exporter.get_finished_spans() if s.name == "child work"]
    assert child.parent is not None and child.parent.span_id == span.context.span_id
    no_hook_or_context_errors(caplog)
