"""Pure builders for the end-of-execution transitions that ``finish.lua`` applies.

Each builder returns one immutable :class:`Transition`; :meth:`Transition.to_wire`
is the one place where it becomes the JSON object ``finish.lua`` reads, and the
script's header documents exactly those fields (a test compares them).  The
worker's counters (successful/failed jobs, working time) travel with each
transition, so an outcome that is applied at most once is also counted at most
once.  Field semantics follow ``docs/rq-protocol.md §8`` (success, failure,
retries, dependents, repeat, give-back); where RQ 3 differs (a returned ``Retry``'s
``enqueue_at_front``, the order of ``Repeat`` intervals), the builders take the RQ
major to follow, by default the installed one (``docs/rq-protocol.md §13.8``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from asyncjobs.protocol.codec import (
    JobRecord,
    ResultType,
    repeat_step,
    result_entry,
    retry_interval,
)
from asyncjobs.protocol.rqversion import RQ_MAJOR
from asyncjobs.protocol.timeutil import epoch_float, epoch_int, format_utc

STOPPED_MESSAGE = "Job stopped by user, work-horse terminated."


class Kind(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"  # no retries left, or the job could not even be run
    STOPPED = "stopped"  # send_stop_job_command
    MAX_RETRIES = "max_retries"  # returned Retry(...) once too often
    RETRY = "retry"  # requeued or scheduled for another attempt
    REQUEUE = "requeue"  # given back unfinished (shutdown), at the front of its queue


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


@dataclass(frozen=True, slots=True)
class Next:
    """Where the job goes after this execution: back on its queue or into the scheduled registry."""

    status: Literal["queued", "scheduled"]
    at_front: bool
    fields: Mapping[str, str]  # job-hash fields written with the new status
    score: str | None = None  # epoch seconds, for "scheduled"


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Kind
    job_id: str
    execution_id: str
    queue: str
    started_at: str = ""
    ended_at: str = ""
    heartbeat: str = ""
    result: tuple[str, ...] | None = None  # flat XADD fields of the Result entry
    result_ttl: int | None = None  # success only
    failure_ttl: int | None = None
    enqueue_dependents: bool = False
    has_dependencies: bool = False  # its rq:job::<id>:dependencies set exists and expires with it
    registry: bool = True  # False: --disable-default-exception-handler (no FailedJobRegistry entry)
    next: Next | None = None
    repairs: Mapping[str, str] | None = None  # fields fixed in a malformed hash
    succeeded: int = 0  # worker counters, applied with the transition
    failed: int = 0
    working_time: float = 0.0
    rate_limit_key: str | None = None  # RQ 3: the job holds a slot under this key until it ends

    def to_wire(self) -> dict[str, Any]:
        """The JSON object ``finish.lua`` reads (see its header)."""
        out: dict[str, Any] = {"id": self.job_id, "eid": self.execution_id, "q": self.queue, "kind": str(self.kind)}
        if self.kind is not Kind.REQUEUE:
            out["started_at"] = self.started_at
            out["ended_at"] = self.ended_at
            out["hb"] = self.heartbeat
        if self.result is not None:
            out["result"] = list(self.result)
        if self.result_ttl is not None:
            out["result_ttl"] = self.result_ttl
        if self.failure_ttl is not None:
            out["failure_ttl"] = self.failure_ttl
        if self.enqueue_dependents:
            out["deps"] = True
        if self.has_dependencies:
            out["dd"] = True
        if not self.registry:
            out["no_registry"] = True
        if self.next is not None:
            nx: dict[str, Any] = {"status": self.next.status, "at_front": self.next.at_front,
                                  "fields": dict(self.next.fields)}
            if self.next.score is not None:
                nx["score"] = self.next.score
            out["next"] = nx
        if self.repairs:
            out["repairs"] = dict(self.repairs)
        if self.succeeded:
            out["ok"] = self.succeeded
        if self.failed:
            out["failed"] = self.failed
        if self.working_time:
            out["wt"] = f"{self.working_time:.6f}"
        if self.rate_limit_key:
            out["rl"] = self.rate_limit_key
        return out

    def without_failure_record(self) -> Transition:
        """Stock's --disable-default-exception-handler: status failed, no Result, no registry entry."""
        return replace(self, result=None, registry=False)


#: The fields :meth:`Transition.to_wire` can emit (finish.lua's header documents each one).
WIRE_FIELDS = frozenset({
    "id", "eid", "q", "kind", "started_at", "ended_at", "hb", "result", "result_ttl", "failure_ttl",
    "deps", "dd", "no_registry", "next", "repairs", "ok", "failed", "wt", "rl",
})


def _base(ex: Execution, kind: Kind, job: JobRecord | None, **kw: Any) -> Transition:
    ended = format_utc(ex.ended_at) if ex.ended_at else ""
    return Transition(
        kind=kind,
        job_id=ex.job_id,
        execution_id=ex.execution_id,
        queue=ex.queue,
        started_at=format_utc(ex.started_at),
        ended_at=ended,
        heartbeat=ended or format_utc(ex.started_at),
        has_dependencies=bool(job is not None and job.dependency_ids),
        **kw,
    )


def _entry(ex: Execution, type_: int, **kw: Any) -> tuple[str, ...]:
    return tuple(
        result_entry(
            type_=type_,
            worker_name=ex.worker_name,
            execution_id=ex.execution_id,
            started=epoch_float(ex.claimed_at),
            ended=epoch_float(ex.ended_at) if ex.ended_at else None,
            **kw,
        )
    )


def _requeue_or_schedule(*, interval: int, now: datetime, at_front: bool, fields: dict[str, str]) -> Next:
    if interval > 0:
        return Next("scheduled", at_front, fields, score=str(epoch_int(now + timedelta(seconds=interval))))
    return Next("queued", at_front, fields)


def success(
    job: JobRecord,
    ex: Execution,
    return_value_b64: str | None,
    default_result_ttl: int,
    *,
    working_time: float = 0.0,
    rq_major: int = RQ_MAJOR,
) -> Transition:
    ttl = job.effective_result_ttl(default_result_ttl)
    nxt = None
    if job.repeats_left is not None and job.repeats_left > 0 and ttl != 0:
        interval, rest = repeat_step(job.repeat_intervals, job.repeats_left, rq_major)
        fields = {"repeats_left": str(job.repeats_left - 1)}
        if rest is not None:
            fields["repeat_intervals"] = json.dumps(list(rest))
        nxt = _requeue_or_schedule(
            interval=interval, now=ex.ended_at or ex.started_at, at_front=False, fields=fields,
        )
    return _base(
        ex, Kind.SUCCESS, job,
        result_ttl=ttl,
        result=_entry(ex, ResultType.SUCCESSFUL, return_value=return_value_b64),
        enqueue_dependents=True,
        next=nxt,
        succeeded=1,
        working_time=working_time,
    )


def failure(
    job: JobRecord,
    ex: Execution,
    exc_text: str,
    *,
    repairs: Mapping[str, str] | None = None,
    working_time: float = 0.0,
) -> Transition:
    """Terminal failure (no retries left), or a job that could not even be run."""
    return _base(
        ex, Kind.FAILURE, job,
        failure_ttl=job.failure_ttl,
        result=_entry(ex, ResultType.FAILED, exc_string=exc_text),
        enqueue_dependents=True,
        repairs=repairs or None,
        failed=1,
        working_time=working_time,
    )


def stopped(job: JobRecord, ex: Execution) -> Transition:
    """``send_stop_job_command``: status stopped, FAILED result, no ended_at, no dependents."""
    entry = result_entry(
        type_=ResultType.FAILED,
        worker_name=ex.worker_name,
        exc_string=STOPPED_MESSAGE,
        execution_id=ex.execution_id,
        started=epoch_float(ex.claimed_at),
    )
    return replace(
        _base(ex, Kind.STOPPED, job, failure_ttl=job.failure_ttl, result=tuple(entry), failed=1),
        ended_at="",
    )


def should_retry_on_exception(job: JobRecord) -> bool:
    """A job that raised is retried (not failed) while ``Retry(max=...)`` has retries left."""
    return job.retries_left is not None and job.retries_left > 0


def retries_exhausted(job: JobRecord, max_retries: int) -> bool:
    """A job that *returned* ``Retry(max=max_retries)`` has been retried that often already."""
    count = job.number_of_retries or 0
    return bool(count) and count >= max_retries


def exception_retry(job: JobRecord, ex: Execution, *, working_time: float = 0.0) -> Transition:
    """``Retry(max, interval)`` and an exception with retries left: no Result, requeue or schedule."""
    assert job.retries_left
    nxt = _requeue_or_schedule(
        interval=retry_interval(job.retry_intervals, job.retries_left),
        now=ex.ended_at or ex.started_at,
        at_front=job.enqueue_at_front_on_retry,
        fields={"retries_left": str(job.retries_left - 1)},
    )
    return _base(ex, Kind.RETRY, None, next=nxt, failed=1, working_time=working_time)


def value_retry(
    job: JobRecord,
    ex: Execution,
    *,
    max_retries: int,
    intervals: tuple[int, ...],
    retry_b64: str,
    working_time: float = 0.0,
    at_front: bool = False,
    rq_major: int = RQ_MAJOR,
) -> Transition:
    """The job *returned* ``Retry(max, interval)``: RETRIED (type 4) or MAX_RETRIES_EXCEEDED (type 5).

    ``at_front`` is the returned ``Retry``'s ``enqueue_at_front``: RQ 3 honours it (and keeps it in
    ``enqueue_at_front_on_retry``), RQ 2.12 always requeues at the back."""
    count = job.number_of_retries or 0
    if retries_exhausted(job, max_retries):
        return _base(
            ex, Kind.MAX_RETRIES, job,
            failure_ttl=job.failure_ttl,
            result=_entry(ex, ResultType.MAX_RETRIES_EXCEEDED, return_value=retry_b64),
            enqueue_dependents=True,
            failed=1,
            working_time=working_time,
        )
    interval = intervals[min(len(intervals) - 1, count)] if intervals else 0
    fields = {"number_of_retries": str(count + 1)}
    front = False
    if rq_major >= 3:
        front = job.enqueue_at_front_on_retry or at_front
        if front and not job.enqueue_at_front_on_retry:
            fields["enqueue_at_front_on_retry"] = "1"
    nxt = _requeue_or_schedule(
        interval=interval, now=ex.ended_at or ex.started_at, at_front=front, fields=fields,
    )
    return _base(
        ex, Kind.RETRY, None,
        failure_ttl=job.failure_ttl,
        result=_entry(ex, ResultType.RETRIED, return_value=retry_b64),
        next=nxt,
        failed=1,
        working_time=working_time,
    )


def give_back(ex: Execution) -> Transition:
    """Put an unfinished job back at the front of its queue (shutdown), as if never started."""
    return Transition(kind=Kind.REQUEUE, job_id=ex.job_id, execution_id=ex.execution_id, queue=ex.queue)
