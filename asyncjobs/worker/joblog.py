"""What the worker says about a job when it starts it.

Like stock ``rq worker`` it logs ``<queue>: <description> (<job id>)``, where the
description is the one RQ stored at enqueue time (the call with its
arguments) unless the job's function describes itself
(:func:`asyncjobs.hooks.log_description`), in which case that text is logged instead: the
delivery tasks use this to keep message bodies, codes and full recipients out
of logs.  ``--disable-job-desc-logging`` (stock's flag) logs only the job id.

Every line about one job (started, OK, failed, retried, stopped) carries :func:`job_extra`
fields: ``job_id``, ``queue``, ``func``, ``status``, ``worker``, and on the lines that end a
job ``duration_ms``; ``--log-format json`` makes them keys of the JSON line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asyncjobs.hooks import LOG_DESCRIPTION_ATTR
from asyncjobs.hooks import log_description as log_description  # its old path (deprecated, one release)
from asyncjobs.protocol.codec import Call, JobRecord

log = logging.getLogger("asyncjobs.worker")


#: Longest description logged (and shown to hooks): RQ stores whatever the producer gave, up to megabytes.
MAX_DESCRIPTION = 500


def describe(record: JobRecord, call: Call, func: Callable[..., Any]) -> str:
    describer = getattr(func, LOG_DESCRIPTION_ATTR, None)
    if callable(describer):
        try:
            text = str(describer(*call.args, **call.kwargs))
        except Exception:  # never fail a job over its log line; never fall back to the raw arguments
            return f"{call.func_name}(...)"
    else:
        text = record.description or call.func_name
    if len(text) > MAX_DESCRIPTION:
        return f"{text[:MAX_DESCRIPTION]}... ({len(text)} characters)"
    return text


def started_message(
    queue: str, record: JobRecord, call: Call, func: Callable[..., Any], with_description: bool
) -> tuple[Any, ...]:
    """``log.info`` arguments for "job started" (description, or only the id when disabled)."""
    if not with_description:
        return ("%s: %s", queue, record.id)
    return ("%s: %s (%s)", queue, describe(record, call, func), record.id)


__all__ = ["describe", "exception_fields", "exception_summary", "job_extra", "started_message"]


def job_extra(
    job_id: str, queue: str, func: str, status: str, worker: str, duration: float | None = None
) -> dict[str, Any]:
    """``extra=`` of a job's log lines: ``--log-format json`` makes each a key of the line."""
    extra: dict[str, Any] = {"job_id": job_id, "queue": queue, "func": func, "status": status, "worker": worker}
    if duration is not None:
        extra["duration_ms"] = round(duration * 1000.0, 3)
    return extra


def exception_type_name(exc: BaseException) -> str:
    """``ValueError`` for built-ins, ``httpx.HTTPStatusError`` for the rest (as a traceback's last line)."""
    cls = type(exc)
    module = getattr(cls, "__module__", "") or ""
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def exception_summary(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone when the message is empty)."""
    lines = str(exc).strip().splitlines()
    name = exception_type_name(exc)
    return f"{name}: {lines[0]}" if lines else name


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """``extra=`` of a failed job's line: ``exc_type`` and ``exc_message`` (the traceback is ``exc_info``)."""
    return {"exc_type": exception_type_name(exc), "exc_message": str(exc)}
