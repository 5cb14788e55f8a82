"""The one place that knows which sentry-sdk is installed: what the Sentry adapter does that differs
between sentry-sdk 2.x and 3.x, and every Sentry internal it relies on.

It follows what Sentry's own RQ integration (``sentry_sdk/integrations/rq.py``) does in each major:

* **sentry-sdk 2.x** (:class:`Sdk2`): a job is a *transaction*: ``continue_trace(headers, op=...,
  name=..., source=..., origin=...)`` builds it, ``start_transaction(tx, custom_sampling_context=...)``
  runs it; ``event_from_exception(..., client_options=...)``; the job's arguments go into events only
  with ``send_default_pii=True``; ``ignore_logger``.  When span streaming is turned on
  (``trace_lifecycle="stream"``, late 2.x), the job is a streamed span as in 3.x, as the 2.x
  integration does.
* **sentry-sdk 3.x** (:class:`Sdk3`): there are no transactions, only streamed spans:
  ``traces.continue_trace(headers)`` sets the propagation context, ``Scope.set_custom_sampling_context``
  the sampler's context, ``traces.start_span(name=..., attributes={...}, parent_span=None)`` starts
  the job's segment span (status ``ok`` or ``error``); ``event_from_exception`` reads the client's
  options itself; ``send_default_pii`` is gone and ``data_collection["queues"]`` is **on** by
  default, so it cannot tell an operator's opt-in from the default: asyncjobs never attaches the
  job's arguments on 3.x (they may hold personal data; see the README); ``ignore_logger_for_events``
  (3.x's ``ignore_logger`` only keeps a logger out of Sentry Logs).

Both majors: each job runs in its own ``isolation_scope()`` (Sentry's integration uses
``new_scope()`` because a stock work-horse runs one job at a time; asyncjobs runs many at once in
one process, and ``continue_trace`` writes the isolation scope too), and cron check-ins for
rq-scheduler's repeating jobs when ``RqIntegration(monitor_cron_jobs=True)`` (Sentry's private
``_start_check_in`` decides the monitor and its schedule exactly as for ``rq worker``).

:data:`PROBLEM` says why the installed SDK cannot be used (a version outside :data:`SUPPORTED`, or
an API this module needs that is missing), or is None; :data:`SDK` is the implementation for the
installed major.  ``tests/observability/test_sentry_compat.py`` checks every name in
:func:`required_api` against the installed SDK, so a change in Sentry's internals fails a test
rather than a job.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import sentry_sdk
import sentry_sdk.utils
from sentry_sdk.consts import VERSION

from asyncjobs.hooks import JobStatus, JobView

__all__ = [
    "FLOOR", "INSTALLED", "PROBLEM", "SDK", "SUPPORTED", "JobTrace", "Sdk2", "Sdk3", "SdkApi", "api_problem",
    "finish_check_in", "missing_api", "required_api", "start_check_in", "version_problem",
]

log = logging.getLogger("asyncjobs.observability.sentry")

INSTALLED: str = VERSION
#: the lowest sentry-sdk this module works with: ``continue_trace(origin=...)`` came in 2.7.0
FLOOR = (2, 7, 0)
#: the majors with an implementation below; a newer major is refused until it is tested
MAJORS = (2, 3)
SUPPORTED = f"sentry-sdk>={FLOOR[0]}.{FLOOR[1]},<{MAJORS[-1] + 1}"

ORIGIN = "auto.queue.rq"  # RqIntegration.origin


def parse_version(text: str) -> tuple[int, ...]:
    """``"3.0.0"`` -> ``(3, 0, 0)``; ``"2.0.0rc6"`` -> ``(2, 0, 0)``; ``()`` if there is no number."""
    parts = []
    for piece in text.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


class JobTrace:
    """The span (3.x, streaming) or transaction (2.x) of one job execution."""

    def end(self, status: JobStatus) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _Transaction(JobTrace):
    #: 2.x transaction statuses (``sentry_sdk.consts.SPANSTATUS``)
    STATUS = {
        JobStatus.FINISHED: "ok",
        JobStatus.FAILED: "internal_error",
        JobStatus.RETRIED: "internal_error",
        JobStatus.STOPPED: "cancelled",
        JobStatus.REQUEUED: "aborted",
    }

    def __init__(self, transaction: Any) -> None:
        self.transaction = transaction

    def end(self, status: JobStatus) -> None:
        try:
            with sentry_sdk.utils.capture_internal_exceptions():
                self.transaction.set_status(self.STATUS[status])
        finally:
            self.transaction.__exit__(None, None, None)


class _StreamedSpan(JobTrace):
    def __init__(self, span: Any) -> None:
        self.span = span

    def end(self, status: JobStatus) -> None:
        try:
            with sentry_sdk.utils.capture_internal_exceptions():
                # Streamed spans know only "ok" and "error"; the outcome itself is an attribute.
                self.span.status = "ok" if status is JobStatus.FINISHED else "error"
                self.span.set_attribute("rq.job.status", str(status))
        finally:
            self.span.__exit__(None, None, None)


def _start_streamed_span(job: JobView) -> JobTrace:
    """What ``sentry_patched_perform_job`` does in 3.x (and in 2.x with span streaming on)."""
    import sentry_sdk.traces
    from sentry_sdk.consts import OP, SPANDATA
    from sentry_sdk.scope import Scope

    sentry_sdk.traces.continue_trace(_trace_headers(job))
    Scope.set_custom_sampling_context({"rq_job": job.job()})
    span = sentry_sdk.traces.start_span(
        name=job.func_name or "unknown RQ task",
        attributes={
            "sentry.op": OP.QUEUE_PROCESS,
            "sentry.origin": ORIGIN,
            "sentry.segment.name.source": "task",  # SegmentNameSource.TASK
            SPANDATA.MESSAGING_MESSAGE_ID: job.id,
            SPANDATA.MESSAGING_DESTINATION_NAME: job.queue,
        },
        parent_span=None,
    )
    try:
        if job.func_name:
            span.set_attribute(SPANDATA.CODE_FUNCTION_NAME, job.func_name)
    except BaseException:
        span.__exit__(None, None, None)
        raise
    return _StreamedSpan(span)


def _trace_headers(job: JobView) -> dict[str, Any]:
    """The producer's trace headers, which ``RqIntegration`` stores in ``job.meta`` at enqueue."""
    headers = job.meta.get("_sentry_trace_headers") or {}
    return dict(headers) if isinstance(headers, dict) else {}


_STREAMING_API: dict[str, tuple[str, ...]] = {
    "sentry_sdk.traces.continue_trace": ("incoming",),
    "sentry_sdk.traces.start_span": ("name", "attributes", "parent_span"),
    "sentry_sdk.scope.Scope.set_custom_sampling_context": ("custom_sampling_context",),
    "sentry_sdk.consts.OP.QUEUE_PROCESS": (),
    "sentry_sdk.consts.SPANDATA.CODE_FUNCTION_NAME": (),
    "sentry_sdk.consts.SPANDATA.MESSAGING_MESSAGE_ID": (),
    "sentry_sdk.consts.SPANDATA.MESSAGING_DESTINATION_NAME": (),
}


class SdkApi:
    """What the adapter calls; one subclass per sentry-sdk major."""

    major = 0

    def required_api(self) -> dict[str, tuple[str, ...]]:
        """The names this implementation uses, with the keyword parameters it passes."""
        raise NotImplementedError

    def streaming(self) -> bool:
        """Jobs are streamed spans (3.x; 2.x with ``trace_lifecycle="stream"``), not transactions."""
        raise NotImplementedError

    def start_transaction(self, job: JobView) -> JobTrace:
        raise NotImplementedError

    def start_trace(self, job: JobView) -> JobTrace:
        """Continue the producer's trace and start the job's span or transaction (in the job's scope)."""
        return _start_streamed_span(job) if self.streaming() else self.start_transaction(job)

    def ignore_logger_for_events(self, name: str) -> None:
        raise NotImplementedError

    def event_from_exception(self, exc: BaseException) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def send_job_arguments(self) -> bool:
        """Whether events may carry the job's ``args``/``kwargs`` (the operator opted in)."""
        raise NotImplementedError


class Sdk2(SdkApi):
    """sentry-sdk 2.x (from :data:`FLOOR`)."""

    major = 2

    def required_api(self) -> dict[str, tuple[str, ...]]:
        api = {
            "sentry_sdk.continue_trace": ("op", "name", "source", "origin"),
            "sentry_sdk.start_transaction": ("custom_sampling_context",),
            "sentry_sdk.utils.event_from_exception": ("client_options", "mechanism"),
            "sentry_sdk.scope.should_send_default_pii": (),
            "sentry_sdk.integrations.logging.ignore_logger": (),
            "sentry_sdk.consts.OP.QUEUE_TASK_RQ": (),
        }
        import sentry_sdk.tracing_utils

        if not hasattr(sentry_sdk.tracing_utils, "has_span_streaming_enabled"):
            return api  # a 2.x release before span streaming
        return {**api, "sentry_sdk.tracing_utils.has_span_streaming_enabled": (), **_STREAMING_API}

    def ignore_logger_for_events(self, name: str) -> None:
        from sentry_sdk.integrations.logging import ignore_logger

        ignore_logger(name)

    def streaming(self) -> bool:
        """``trace_lifecycle="stream"`` (2.x releases that have it): spans, not transactions."""
        try:
            from sentry_sdk.tracing_utils import (  # type: ignore[attr-defined, unused-ignore]
                has_span_streaming_enabled,
            )
        except ImportError:  # before span streaming existed
            return False
        return bool(has_span_streaming_enabled(sentry_sdk.get_client().options))

    def start_transaction(self, job: JobView) -> JobTrace:
        from sentry_sdk.consts import OP

        transaction = sentry_sdk.continue_trace(  # type: ignore[call-arg, func-returns-value, unused-ignore]
            _trace_headers(job),
            op=OP.QUEUE_TASK_RQ,
            name=job.func_name or "unknown RQ task",
            source="task",  # TransactionSource.TASK (a plain constant in early 2.x)
            origin=ORIGIN,
        )
        tx: Any = sentry_sdk.start_transaction(  # type: ignore[attr-defined, unused-ignore]
            transaction, custom_sampling_context={"rq_job": job.job()}
        )
        tx.__enter__()
        try:
            tx.set_data("messaging.destination.name", job.queue)
            tx.set_data("messaging.message.id", job.id)
        except BaseException:
            tx.__exit__(None, None, None)
            raise
        return _Transaction(tx)

    def event_from_exception(self, exc: BaseException) -> tuple[Any, dict[str, Any]]:
        event, hint = sentry_sdk.utils.event_from_exception(  # type: ignore[call-arg, unused-ignore]
            (type(exc), exc, exc.__traceback__),
            client_options=sentry_sdk.get_client().options,
            mechanism={"type": "rq", "handled": False},
        )
        return event, hint

    def send_job_arguments(self) -> bool:
        """Only with ``send_default_pii=True`` (and not when ``data_collection`` turns queues off)."""
        from sentry_sdk.scope import should_send_default_pii  # type: ignore[attr-defined, unused-ignore]

        if not should_send_default_pii():
            return False
        collection = sentry_sdk.get_client().options.get("data_collection")
        return not (isinstance(collection, dict) and collection.get("provided_by_user")
                    and collection.get("queues") is False)


class Sdk3(SdkApi):
    """sentry-sdk 3.x."""

    major = 3

    def required_api(self) -> dict[str, tuple[str, ...]]:
        return {
            **_STREAMING_API,
            "sentry_sdk.utils.event_from_exception": ("mechanism",),
            "sentry_sdk.integrations.logging.ignore_logger_for_events": (),
        }

    def ignore_logger_for_events(self, name: str) -> None:
        from sentry_sdk.integrations.logging import (  # type: ignore[attr-defined, unused-ignore]
            ignore_logger_for_events,
        )

        ignore_logger_for_events(name)

    def streaming(self) -> bool:
        return True

    def start_transaction(self, job: JobView) -> JobTrace:  # pragma: no cover - 3.x has none
        raise NotImplementedError("sentry-sdk 3.x has no transactions")

    def event_from_exception(self, exc: BaseException) -> tuple[Any, dict[str, Any]]:
        event, hint = sentry_sdk.utils.event_from_exception(
            (type(exc), exc, exc.__traceback__), mechanism={"type": "rq", "handled": False}
        )
        return event, hint

    def send_job_arguments(self) -> bool:
        return False


# ------------------------------------------------------------------ shared by both majors
_COMMON_API: dict[str, tuple[str, ...]] = {
    "sentry_sdk.get_client": (),
    "sentry_sdk.isolation_scope": (),
    "sentry_sdk.capture_event": ("event", "hint"),
    "sentry_sdk.capture_message": ("message", "level"),
    "sentry_sdk.utils.capture_internal_exceptions": (),
    "sentry_sdk.utils.format_timestamp": (),
    "sentry_sdk.scope.Scope.add_event_processor": (),
    "sentry_sdk.scope.Scope.clear_breadcrumbs": (),
    "sentry_sdk.integrations.rq.RqIntegration": (),
    "sentry_sdk.crons.capture_checkin": ("monitor_slug", "monitor_config", "check_in_id", "duration", "status"),
    "sentry_sdk.crons.MonitorStatus": (),
    "sentry_sdk.utils.now": (),
    "sentry_sdk.get_traceparent": (),
}


def current_trace_id() -> str | None:
    """The trace id of the current scope (``sentry-trace`` is ``<trace id>-<span id>[-<sampled>]``)."""
    traceparent = sentry_sdk.get_traceparent()
    return traceparent.split("-", 1)[0] if traceparent else None


def _cron_api() -> dict[str, tuple[str, ...]]:
    """Sentry's private ``_start_check_in`` -- needed only where ``RqIntegration`` has cron monitoring."""
    try:
        from sentry_sdk.integrations.rq import RqIntegration
    except Exception:  # reported by missing_api for RqIntegration itself
        return {}
    if "monitor_cron_jobs" not in inspect.signature(RqIntegration.__init__).parameters:
        return {}
    return {"sentry_sdk.integrations.rq._start_check_in": ("integration", "job")}


def required_api(sdk: SdkApi | None = None) -> dict[str, tuple[str, ...]]:
    """Every sentry-sdk name the implementation for the installed major uses, with the keyword
    parameters it passes (``{"sentry_sdk.continue_trace": ("op", "name", ...)}``)."""
    sdk = sdk or _implementation()
    return {**_COMMON_API, **sdk.required_api(), **_cron_api()}


def _resolve(dotted: str) -> Any:
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def missing_api(sdk: SdkApi | None = None) -> list[str]:
    """The names of :func:`required_api` the installed SDK lacks, or whose keywords changed."""
    missing = []
    for dotted, keywords in required_api(sdk).items():
        try:
            obj = _resolve(dotted)
        except (ImportError, AttributeError):
            missing.append(dotted)
            continue
        except Exception as exc:  # e.g. DidNotEnable from an integration that refuses the installed rq
            missing.append(f"{dotted} ({type(exc).__name__}: {exc})")
            continue
        if keywords:
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                missing.append(f"{dotted}({', '.join(keywords)})")
                continue
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            absent = [k for k in keywords if k not in params and not takes_any]
            if absent:
                missing.append(f"{dotted}({', '.join(absent)}=...)")
    return missing


def _implementation() -> SdkApi:
    return Sdk3() if parse_version(INSTALLED)[:1] == (3,) else Sdk2()


_FIX = (f"install a supported one: pip install '{SUPPORTED}' "
        "(or an asyncjobs-rq release that supports this one, if there is one)")


def version_problem(installed: str) -> str | None:
    """Why sentry-sdk ``installed`` is refused by its version alone, or None."""
    version = (*parse_version(installed), 0, 0, 0)[:3]
    if version[0] not in MAJORS or version < FLOOR:
        return f"sentry-sdk {installed} is installed; asyncjobs' Sentry adapter needs {SUPPORTED}: {_FIX}"
    return None


def api_problem(sdk: SdkApi | None = None) -> str | None:
    """Why the installed SDK is refused for a missing or changed API (see :func:`missing_api`), or None."""
    missing = missing_api(sdk)
    if not missing:
        return None
    return (f"sentry-sdk {INSTALLED} lacks what asyncjobs' Sentry adapter uses ({', '.join(missing)}); "
            f"it is tested with {SUPPORTED}: {_FIX}")


PROBLEM: str | None = version_problem(INSTALLED) or api_problem()
SDK: SdkApi = _implementation()


# ------------------------------------------------------------------ cron check-ins (both majors)
_said_no_check_ins: list[bool] = []


def start_check_in(job: JobView) -> tuple[Any, ...] | None:
    """An ``in_progress`` check-in, as ``RqIntegration(monitor_cron_jobs=True)`` sends for ``rq worker``."""
    from sentry_sdk.integrations import rq as sentry_rq

    integration = sentry_sdk.get_client().get_integration(sentry_rq.RqIntegration)
    if integration is None or not getattr(integration, "monitor_cron_jobs", False):
        return None
    start = getattr(sentry_rq, "_start_check_in", None)
    if start is None:  # pragma: no cover - caught by test_sentry_compat on a new SDK
        if not _said_no_check_ins:
            _said_no_check_ins.append(True)
            log.warning("RqIntegration(monitor_cron_jobs=True) is set, but sentry-sdk %s has no "
                        "_start_check_in: asyncjobs sends no cron check-ins; it is tested with %s",
                        INSTALLED, SUPPORTED)
        return None
    check_in = start(integration, job.job())
    return tuple(check_in) if check_in is not None else None


def finish_check_in(check_in: tuple[Any, ...], ok: bool) -> None:
    from sentry_sdk.crons import MonitorStatus, capture_checkin
    from sentry_sdk.utils import now

    monitor_slug, monitor_config, check_in_id, started = check_in
    capture_checkin(
        monitor_slug=monitor_slug,
        monitor_config=monitor_config,
        check_in_id=check_in_id,
        duration=now() - started,
        status=MonitorStatus.OK if ok else MonitorStatus.ERROR,
    )
