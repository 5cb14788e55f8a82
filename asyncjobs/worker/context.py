"""``get_current_job()`` for async and threaded jobs.

The job being run is kept in a context variable, which follows the job into
its own task and into the thread that runs a sync job.  ``rq.get_current_job()``
works too, under either RQ major: RQ 3 keeps the job in a context variable of its
own (``rq.job._current_job``), set here in the job's task or thread; RQ 2.12 keeps a
thread-local stack, keyed per (thread, asyncio task) once the worker calls
:func:`install_rq_job_stack`, so concurrent async jobs on one loop each see their own job.

The returned object is a real ``rq.job.Job`` built lazily from the hash the
worker already read (no extra round trip), bound to a synchronous Redis
connection, so ``job.meta[...] = ...; job.save_meta()`` works as under stock RQ.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Any

_current: contextvars.ContextVar[JobHandle | None] = contextvars.ContextVar("asyncjobs_current_job", default=None)


class JobHandle:
    """Builds the ``rq.job.Job`` for the running job on first use."""

    __slots__ = ("_connection_factory", "_job", "_raw", "_serializer", "job_id")

    def __init__(
        self, job_id: str, raw: Mapping[str, bytes], connection_factory: Callable[[], Any], serializer: Any
    ) -> None:
        self.job_id = job_id
        self._raw = raw
        self._connection_factory = connection_factory
        self._serializer = serializer
        self._job: Any = None

    def job(self) -> Any:
        if self._job is None:
            from rq.job import Job

            job = Job(id=self.job_id, connection=self._connection_factory(), serializer=self._serializer)
            job.restore({k.encode(): v for k, v in self._raw.items()})
            self._job = job
        return self._job


class _LazyJob:
    """What ``rq.get_current_job()`` returns: forwards everything to the real Job."""

    __slots__ = ("_handle",)

    def __init__(self, handle: JobHandle) -> None:
        object.__setattr__(self, "_handle", handle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle.job(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._handle.job(), name, value)

    def __repr__(self) -> str:
        return f"<Job {self._handle.job_id} (asyncjobs)>"


def in_job() -> bool:
    """True inside a job the asyncjobs engine runs (its task, or a sync job's thread)."""
    return _current.get() is not None


def get_current_job() -> Any:
    """The ``rq.job.Job`` being executed by this task or thread, or None outside a job."""
    handle = _current.get()
    return handle.job() if handle is not None else None


def set_current(handle: JobHandle | None) -> contextvars.Token[JobHandle | None]:
    return _current.set(handle)


def reset_current(token: contextvars.Token[JobHandle | None]) -> None:
    _current.reset(token)


def _task_aware_ident() -> Any:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return (threading.get_ident(), id(task)) if task is not None else threading.get_ident()


def install_rq_job_stack() -> None:
    """Make ``rq.get_current_job()`` per asyncio task as well as per thread (idempotent).

    RQ 3's context variable already is; RQ 2.12's ``LocalStack`` is keyed by thread only."""
    from rq import job as rq_job

    stack = getattr(rq_job, "_job_stack", None)
    if stack is not None:  # RQ 2.12
        stack.__ident_func__ = _task_aware_ident


def push_rq_job(handle: JobHandle) -> Any:
    """Make ``handle``'s job ``rq.get_current_job()`` in the current context (task or thread);
    returns what :func:`pop_rq_job` needs, to be called in the same context."""
    from rq import job as rq_job

    current = getattr(rq_job, "_current_job", None)
    if current is not None:  # RQ 3: a ContextVar
        return current.set(_LazyJob(handle))
    rq_job.__dict__["_job_stack"].push(_LazyJob(handle))  # RQ 2.12
    return None


def pop_rq_job(token: Any = None) -> None:
    from rq import job as rq_job

    if token is not None:
        rq_job.__dict__["_current_job"].reset(token)  # RQ 3
    else:
        rq_job.__dict__["_job_stack"].pop()
