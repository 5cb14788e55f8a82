"""Sentry for asyncjobs workers: what ``sentry_sdk.integrations.rq`` does for ``rq worker``.

Sentry's RQ integration patches ``Worker.perform_job``, which asyncjobs never calls; this module
does the same work from asyncjobs' hooks:

* each job runs in its own Sentry isolation scope, inside a ``queue.task.rq`` transaction that
  continues the producer's trace (the integration stores the producer's trace headers in
  ``job.meta["_sentry_trace_headers"]`` at enqueue), so errors and spans of the job carry the
  producer's trace id;
* a job that **fails** is reported once, with ``extra["rq-job"]`` (job id, queue, function,
  description, enqueue and start times; arguments only when ``send_default_pii`` is on), as
  stock does.  Like stock, an attempt that will be **retried** (``Retry(max=...)`` with retries
  left) is not reported: only the last, failing attempt is.  Stopped jobs and jobs put back at
  shutdown are not errors.  The worker's own "job failed" log line is not sent again as a
  second event (its logger is ignored by Sentry's logging integration, as stock does for
  ``rq.worker``).

Enabled on its own when the worker process initialised Sentry with ``RqIntegration`` (for
example in a ``-c`` settings module, a ``--hooks`` module's ``on_startup``, or Django
settings); or explicitly: ``--hooks asyncjobs.observability.sentry``.
"""

from __future__ import annotations

from typing import Any

from asyncjobs._extras import missing_extra
from asyncjobs.worker.hooks import JobOutcome, JobStatus, JobView

try:
    import sentry_sdk
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.utils import capture_internal_exceptions, event_from_exception, format_timestamp
except ImportError as exc:  # pragma: no cover - exercised by the packaging test
    raise missing_extra("sentry", "asyncjobs.observability.sentry", exc) from exc

__all__ = ["after_job", "auto_enable", "before_job"]

_STATE = "asyncjobs.sentry"
#: the worker's own job lines ("job ... failed"): the error event is the hook's, not the log's
_OWN_LOGGERS = ("asyncjobs.worker",)
_TX_STATUS = {
    JobStatus.FINISHED: "ok",
    JobStatus.FAILED: "internal_error",
    JobStatus.RETRIED: "internal_error",
    JobStatus.STOPPED: "cancelled",
    JobStatus.REQUEUED: "aborted",
}


def auto_enable() -> bool:
    """True when Sentry is initialised with ``RqIntegration`` (what stock ``rq worker`` keys on)."""
    from sentry_sdk.integrations.rq import RqIntegration

    return sentry_sdk.get_client().get_integration(RqIntegration) is not None


def _ignore_own_loggers() -> None:
    for name in _OWN_LOGGERS:
        ignore_logger(name)


_ignore_own_loggers()


def before_job(job: JobView) -> None:
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    scope_cm = sentry_sdk.isolation_scope()
    scope = scope_cm.__enter__()
    tx_cm: Any = None
    try:
        scope.clear_breadcrumbs()
        scope.add_event_processor(_event_processor(job))
        from sentry_sdk.consts import OP
        from sentry_sdk.tracing import TransactionSource

        headers = job.meta.get("_sentry_trace_headers") or {}
        transaction = sentry_sdk.continue_trace(
            dict(headers) if isinstance(headers, dict) else {},
            op=OP.QUEUE_TASK_RQ,
            name=job.func_name or "unknown RQ task",
            source=TransactionSource.TASK,
            origin="auto.queue.rq",
        )
        tx_cm = sentry_sdk.start_transaction(transaction, custom_sampling_context={"rq_job": job.job()})
        span = tx_cm.__enter__()
        span.set_data("messaging.destination.name", job.queue)
        span.set_data("messaging.message.id", job.id)
    except BaseException:
        if tx_cm is not None:
            tx_cm.__exit__(None, None, None)
        scope_cm.__exit__(None, None, None)
        raise
    job.state[_STATE] = (scope_cm, tx_cm)


def after_job(job: JobView, outcome: JobOutcome) -> None:
    entered = job.state.pop(_STATE, None)
    if entered is None:
        return
    scope_cm, tx_cm = entered
    try:
        if outcome.status is JobStatus.FAILED:
            _capture(outcome)
        with capture_internal_exceptions():
            tx_cm.set_status(_TX_STATUS[outcome.status])
    finally:
        try:
            tx_cm.__exit__(None, None, None)
        finally:
            scope_cm.__exit__(None, None, None)


def _capture(outcome: JobOutcome) -> None:
    exc = outcome.exception
    if exc is not None:
        client = sentry_sdk.get_client()
        event, hint = event_from_exception(
            (type(exc), exc, exc.__traceback__),
            client_options=client.options,
            mechanism={"type": "rq", "handled": False},
        )
        sentry_sdk.capture_event(event, hint=hint)
        return
    # Failed without an exception object (e.g. killed by send_kill_horse_command).
    text = (outcome.exc_text or "job failed").strip().splitlines()
    sentry_sdk.capture_message(text[-1] if text else "job failed", level="error")


def _event_processor(job: JobView) -> Any:
    def process(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        with capture_internal_exceptions():
            rq_job: dict[str, Any] = {
                "job_id": job.id,
                "queue": job.queue,
                "func": job.func_name,
                "description": job.description,
                "worker": job.worker_name,
            }
            from sentry_sdk.scope import should_send_default_pii

            if should_send_default_pii():
                real = job.job()
                rq_job["args"], rq_job["kwargs"] = real.args, real.kwargs
            else:
                rq_job["args"] = rq_job["kwargs"] = "[Filtered]"  # sentry's SENSITIVE_DATA_SUBSTITUTE
            if job.enqueued_at is not None:
                rq_job["enqueued_at"] = format_timestamp(job.enqueued_at)
            event.setdefault("extra", {})["rq-job"] = rq_job
            tags = event.setdefault("tags", {})
            if isinstance(tags, dict):
                tags.setdefault("rq.queue", job.queue)
        exc_info = hint.get("exc_info") if isinstance(hint, dict) else None
        if exc_info:
            with capture_internal_exceptions():
                from rq.timeouts import JobTimeoutException

                if issubclass(exc_info[0], JobTimeoutException):
                    event["fingerprint"] = ["rq", "JobTimeoutException", job.func_name]
        return event

    return process
