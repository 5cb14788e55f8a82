"""Sentry for asyncjobs workers: what ``sentry_sdk.integrations.rq`` does for ``rq worker``.

Sentry's RQ integration patches ``Worker.perform_job``, which asyncjobs never calls; this module
does the same work from asyncjobs' hooks, on sentry-sdk 2.x and 3.x (what differs between them,
and every Sentry internal used, is in :mod:`asyncjobs.observability._sentry_compat`):

* each job runs in its own Sentry isolation scope and continues the producer's trace (the
  integration stores the producer's trace headers in ``job.meta["_sentry_trace_headers"]`` at
  enqueue), so errors and spans of the job carry the producer's trace id: a ``queue.task.rq``
  transaction on 2.x, a ``queue.process`` segment span on 3.x (and on 2.x with span streaming);
* a job that **fails** is reported once, with ``extra["rq-job"]`` (job id, queue, function,
  description, worker, enqueue time; arguments only when the operator opted in with 2.x's
  ``send_default_pii=True``, never on 3.x), as stock does.  Like stock, an attempt that will be
  **retried** (``Retry(max=...)`` with retries left) is not reported: only the last, failing attempt
  is.  Stopped jobs and jobs put back at shutdown are not errors.  The worker's own "job failed" log
  line is not sent again as a second event (its logger is ignored for events by Sentry's logging
  integration, as stock does for ``rq.worker``); it carries the job's ``trace_id`` instead (a JSON
  key, and named at the end of the text line), as do the other lines that end the job;
* with ``RqIntegration(monitor_cron_jobs=True)``, jobs rq-scheduler repeats send cron check-ins.

Enabled on its own when the worker process initialised Sentry with ``RqIntegration`` (for
example in a ``-c`` settings module, a ``--hooks`` module's ``on_startup``, or Django
settings); or explicitly: ``--hooks asyncjobs.observability.sentry``.  With a sentry-sdk outside
:data:`~asyncjobs.observability._sentry_compat.SUPPORTED` the import raises
:class:`~asyncjobs._extras.UnsupportedVersionError` naming the version and the fix: the worker says
so once at start-up and leaves the adapter out (or, given with ``--hooks``, refuses to start).
"""

from __future__ import annotations

from typing import Any

from asyncjobs._extras import UnsupportedVersionError, missing_extra
from asyncjobs.hooks import JobOutcome, JobStatus, JobView

try:
    import sentry_sdk
    from sentry_sdk.utils import capture_internal_exceptions, format_timestamp
except ImportError as exc:  # pragma: no cover - exercised by the packaging test
    raise missing_extra("sentry", "asyncjobs.observability.sentry", exc) from exc

from asyncjobs.observability import _sentry_compat as compat

if compat.PROBLEM is not None:
    raise UnsupportedVersionError(compat.PROBLEM, name="sentry_sdk")

__all__ = ["after_job", "auto_enable", "before_job"]

_STATE = "asyncjobs.sentry"
#: the worker's own job lines ("job ... failed"): the error event is the hook's, not the log's
_OWN_LOGGERS = ("asyncjobs.worker",)


def auto_enable() -> bool:
    """True when Sentry is initialised with ``RqIntegration`` (what stock ``rq worker`` keys on)."""
    from sentry_sdk.integrations.rq import RqIntegration

    return sentry_sdk.get_client().get_integration(RqIntegration) is not None


def _ignore_own_loggers() -> None:
    for name in _OWN_LOGGERS:
        compat.SDK.ignore_logger_for_events(name)


_ignore_own_loggers()


def before_job(job: JobView) -> None:
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    check_in = None
    with capture_internal_exceptions():
        check_in = compat.start_check_in(job)
    scope_cm = sentry_sdk.isolation_scope()
    scope = scope_cm.__enter__()
    try:
        scope.clear_breadcrumbs()
        scope.add_event_processor(_event_processor(job))
        trace = compat.SDK.start_trace(job)
        with capture_internal_exceptions():  # the worker's lines about this job name its trace
            trace_id = compat.current_trace_id()
            if trace_id:
                job.log_fields["trace_id"] = trace_id
    except BaseException:
        scope_cm.__exit__(None, None, None)
        if check_in is not None:
            with capture_internal_exceptions():
                compat.finish_check_in(check_in, ok=False)
        raise
    job.state[_STATE] = (scope_cm, trace, check_in)


def after_job(job: JobView, outcome: JobOutcome) -> None:
    entered = job.state.pop(_STATE, None)
    if entered is None:
        return
    scope_cm, trace, check_in = entered
    try:
        if outcome.status is JobStatus.FAILED:
            _capture(outcome)
    finally:
        try:
            trace.end(outcome.status)
        finally:
            scope_cm.__exit__(None, None, None)
            if check_in is not None:
                with capture_internal_exceptions():
                    compat.finish_check_in(check_in, ok=outcome.ok)


def _capture(outcome: JobOutcome) -> None:
    exc = outcome.exception
    if exc is not None:
        event, hint = compat.SDK.event_from_exception(exc)
        sentry_sdk.capture_event(event, hint=hint)
        return
    # Failed without an exception object (e.g. killed by send_kill_horse_command).
    text = (outcome.exc_text or "job failed").strip().splitlines()
    sentry_sdk.capture_message(text[-1] if text else "job failed", level="error")


#: Modules whose frames hold recipients, message bodies, codes and provider requests in their locals,
#: and the executor's, whose locals are every job's arguments.
_PERSONAL_FRAMES = ("asyncjobs.delivery", "asyncjobs.tasks", "asyncjobs.notifications", "asyncjobs.worker.executor")


def _scrub_delivery_frames(event: dict[str, Any]) -> None:
    """Drop the local variables of the delivery code's frames (Sentry sends locals by default)."""
    for value in (event.get("exception") or {}).get("values") or ():
        for frame in ((value or {}).get("stacktrace") or {}).get("frames") or ():
            module = str(frame.get("module") or "")
            if any(module == p or module.startswith(p + ".") for p in _PERSONAL_FRAMES):
                frame.pop("vars", None)


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
            if compat.SDK.send_job_arguments():
                real = job.job()
                rq_job["args"], rq_job["kwargs"] = real.args, real.kwargs
            else:
                rq_job["args"] = rq_job["kwargs"] = "[Filtered]"  # sentry's SENSITIVE_DATA_SUBSTITUTE
            if job.enqueued_at is not None:
                rq_job["enqueued_at"] = format_timestamp(job.enqueued_at)
            event.setdefault("extra", {})["rq-job"] = rq_job
            _scrub_delivery_frames(event)
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
