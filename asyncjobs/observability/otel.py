"""OpenTelemetry for asyncjobs workers: one span per job, child of the producer's context.

``opentelemetry-instrumentation-rq`` traces ``rq worker`` by wrapping ``Worker.perform_job``,
which asyncjobs never calls.  With this adapter each job execution is a ``CONSUMER`` span named
``consume <queue>`` (the name the instrumentation gives stock's), whose parent is the context the
producer propagated in ``job.meta`` (the instrumentation's ``Queue._enqueue_job`` wrapper injects
W3C ``traceparent``/``tracestate`` keys into ``job.meta``; this reads them with the global
propagator first, then with W3C trace context), with attributes

* ``messaging.system`` = ``rq``, ``messaging.operation.type`` = ``process``,
  ``messaging.destination.name`` (queue), ``messaging.message.id`` (job id),
  ``messaging.consumer.group.name`` (worker name);
* ``rq.job.id``, ``rq.job.function`` (the instrumentation's keys), ``rq.job.status``
  (finished, failed, retried, stopped, requeued);

status ``ERROR`` with the exception recorded when the attempt failed (also when it will be
retried), ``OK`` when it finished.  The worker's log lines that end the job carry ``trace_id`` and
``span_id`` (JSON keys; the failed-job line names the trace in text too).  The span is current while the job runs, so spans the job
creates (HTTP clients, databases) are its children.

Enabled on its own when ``RQInstrumentor().instrument()`` was called in the worker process, or
explicitly: ``--hooks asyncjobs.observability.otel`` (then any producer that propagates W3C trace
context in ``job.meta`` is followed).  Needs a tracer provider set up as usual (SDK + exporter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncjobs._extras import missing_extra
from asyncjobs.hooks import JobOutcome, JobStatus, JobView

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised by the packaging test
    raise missing_extra("otel", "asyncjobs.observability.otel", exc) from exc

__all__ = ["after_job", "auto_enable", "before_job", "producer_context"]

_STATE = "asyncjobs.otel"
_W3C = TraceContextTextMapPropagator()


def auto_enable() -> bool:
    """True when ``opentelemetry-instrumentation-rq`` instrumented RQ in this process."""
    try:
        from opentelemetry_instrumentation_rq import RQInstrumentor
    except ImportError:
        return False
    return bool(RQInstrumentor().is_instrumented_by_opentelemetry)


def producer_context(meta: Mapping[str, Any]) -> context.Context:
    """The context the producer propagated in ``job.meta`` (global propagator, then W3C)."""
    carrier = {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}
    ctx = propagate.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        ctx = _W3C.extract(carrier)
    return ctx


def before_job(job: JobView) -> None:
    parent = producer_context(job.meta)
    tracer = trace.get_tracer("asyncjobs")
    span = tracer.start_span(
        f"consume {job.queue}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rq",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "messaging.consumer.group.name": job.worker_name,
            "rq.job.id": job.id,
            "rq.job.function": job.func_name,
        },
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    job.state[_STATE] = (span, token)
    span_context = span.get_span_context()
    if span_context.is_valid:  # the worker's lines about this job name its trace
        job.log_fields["trace_id"] = trace.format_trace_id(span_context.trace_id)
        job.log_fields["span_id"] = trace.format_span_id(span_context.span_id)


def after_job(job: JobView, outcome: JobOutcome) -> None:
    entered = job.state.pop(_STATE, None)
    if entered is None:
        return
    span, token = entered
    try:
        span.set_attribute("rq.job.status", str(outcome.status))
        if outcome.status in (JobStatus.FAILED, JobStatus.RETRIED):
            if outcome.exception is not None:
                span.record_exception(outcome.exception)
            description = (outcome.exc_text or "").strip().splitlines()
            span.set_status(trace.Status(trace.StatusCode.ERROR, description[-1] if description else None))
        elif outcome.status is JobStatus.FINISHED:
            span.set_status(trace.Status(trace.StatusCode.OK))
    finally:
        span.end()
        context.detach(token)
