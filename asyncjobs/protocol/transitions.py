"""Pure builders for the end-of-execution transitions that ``finish.lua`` applies.

Each function returns the JSON-able description of one job's transition; the
store batches many of them into one script call.  Field semantics follow
rq-protocol.md §3.5-§3.7 and §8.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asyncjobs.protocol.codec import (
    DEFAULT_FAILURE_TTL,
    JobRecord,
    ResultType,
    repeat_interval,
    result_entry,
    retry_interval,
)
from asyncjobs.protocol.timeutil import epoch_float, epoch_int, format_utc

STOPPED_MESSAGE = "Job stopped by user, work-horse terminated."


@dataclass(frozen=True, slots=True)
class Execution:
    """Where and when one execution of a job ran."""

    job_id: str
    execution_id: str
    queue: str
    worker_name: str
    claimed_at: datetime
    started_at: datetime
    ended_at: datetime | None


def _base(ex: Execution, kind: str) -> dict[str, Any]:
    ended = format_utc(ex.ended_at) if ex.ended_at else ""
    return {
        "id": ex.job_id,
        "eid": ex.execution_id,
        "q": ex.queue,
        "kind": kind,
        "started_at": format_utc(ex.started_at),
        "ended_at": ended,
        "hb": ended or format_utc(ex.started_at),
    }


def _job_flags(out: dict[str, Any], job: JobRecord) -> dict[str, Any]:
    if job.dependency_ids:
        out["dd"] = True  # its rq:job::<id>:dependencies set exists and must expire with it
    return out


def _entry(ex: Execution, type_: int, **kw: Any) -> list[str]:
    return result_entry(
        type_=type_,
        worker_name=ex.worker_name,
        execution_id=ex.execution_id,
        started=epoch_float(ex.claimed_at),
        ended=epoch_float(ex.ended_at) if ex.ended_at else None,
        **kw,
    )


def _requeue_or_schedule(
    *, interval: int, now: datetime, at_front: bool, fields: dict[str, str]
) -> dict[str, Any]:
    if interval > 0:
        return {
            "status": "scheduled",
            "score": str(epoch_int(now + timedelta(seconds=interval))),
            "at_front": at_front,
            "fields": fields,
        }
    return {"status": "queued", "at_front": at_front, "fields": fields}


def success(
    job: JobRecord, ex: Execution, return_value_b64: str | None, default_result_ttl: int
) -> dict[str, Any]:
    out = _job_flags(_base(ex, "success"), job)
    ttl = job.effective_result_ttl(default_result_ttl)
    out["result_ttl"] = str(ttl)
    out["result"] = _entry(ex, ResultType.SUCCESSFUL, return_value=return_value_b64)
    out["deps"] = True
    if job.repeats_left is not None and job.repeats_left > 0 and ttl != 0:
        interval = repeat_interval(job.repeat_intervals, job.repeats_left)
        out["next"] = _requeue_or_schedule(
            interval=interval,
            now=ex.ended_at or ex.started_at,
            at_front=False,
            fields={"repeats_left": str(job.repeats_left - 1)},
        )
    return out


def failure(
    job: JobRecord, ex: Execution, exc_text: str, *, repairs: dict[str, str] | None = None
) -> dict[str, Any]:
    """Terminal failure (no retries left), or a job that could not even be run."""
    out = _job_flags(_base(ex, "failure"), job)
    if job.failure_ttl is not None:
        out["failure_ttl"] = str(job.failure_ttl)
    out["result"] = _entry(ex, ResultType.FAILED, exc_string=exc_text)
    out["deps"] = True
    if repairs:
        out["repairs"] = repairs
    return out


def stopped(job: JobRecord, ex: Execution) -> dict[str, Any]:
    """``send_stop_job_command``: status stopped, FAILED result, no ended_at, no dependents."""
    out = _job_flags(_base(ex, "stopped"), job)
    out["ended_at"] = ""
    if job.failure_ttl is not None:
        out["failure_ttl"] = str(job.failure_ttl)
    out["result"] = result_entry(
        type_=ResultType.FAILED,
        worker_name=ex.worker_name,
        exc_string=STOPPED_MESSAGE,
        execution_id=ex.execution_id,
        started=epoch_float(ex.claimed_at),
    )
    return out


def should_retry_on_exception(job: JobRecord) -> bool:
    return job.retries_left is not None and job.retries_left > 0


def exception_retry(job: JobRecord, ex: Execution) -> dict[str, Any]:
    """``Retry(max, interval)`` and an exception with retries left: no Result, requeue or schedule."""
    assert job.retries_left
    interval = retry_interval(job.retry_intervals, job.retries_left)
    out = _base(ex, "retry")
    out["next"] = _requeue_or_schedule(
        interval=interval,
        now=ex.ended_at or ex.started_at,
        at_front=job.enqueue_at_front_on_retry,
        fields={"retries_left": str(job.retries_left - 1)},
    )
    return out


def value_retry(
    job: JobRecord, ex: Execution, *, max_retries: int, intervals: tuple[int, ...], retry_b64: str
) -> dict[str, Any]:
    """The job *returned* ``Retry(max, interval)``: RETRIED (type 4) or MAX_RETRIES_EXCEEDED (type 5)."""
    count = job.number_of_retries or 0
    if count and count >= max_retries:
        out = _job_flags(_base(ex, "max_retries"), job)
        if job.failure_ttl is not None:
            out["failure_ttl"] = str(job.failure_ttl)
        out["result"] = _entry(ex, ResultType.MAX_RETRIES_EXCEEDED, return_value=retry_b64)
        out["deps"] = True
        return out
    interval = intervals[min(len(intervals) - 1, count)] if intervals else 0
    out = _base(ex, "retry")
    if job.failure_ttl is not None:
        out["failure_ttl"] = str(job.failure_ttl)
    out["result"] = _entry(ex, ResultType.RETRIED, return_value=retry_b64)
    out["next"] = _requeue_or_schedule(
        interval=interval,
        now=ex.ended_at or ex.started_at,
        at_front=False,
        fields={"number_of_retries": str(count + 1)},
    )
    return out


def give_back(ex: Execution) -> dict[str, Any]:
    """Put an unfinished job back at the front of its queue (cold shutdown)."""
    return {"id": ex.job_id, "eid": ex.execution_id, "q": ex.queue, "kind": "requeue"}


def failure_ttl_or_default(job: JobRecord) -> int:
    return DEFAULT_FAILURE_TTL if job.failure_ttl is None else job.failure_ttl
