"""The public surface for job code and adapters: lifecycle hooks, the job view, outcomes.

Lifecycle hooks are code of yours that the worker runs at start, at stop, and around every job.

Four hooks, each optional::

    def on_startup() -> None: ...            # or async def; before the worker registers
    def on_shutdown() -> None: ...           # or async def; after the last job ended
    def before_job(job: JobView) -> None: ...                     # or async def
    def after_job(job: JobView, outcome: JobOutcome) -> None: ...  # or async def

A *hook source* is a module (``--hooks myapp.worker_hooks``, repeatable), any object with some
of those attributes, or a :class:`WorkerHooks`.  ``WorkerConfig(hooks=(...))`` takes the same.

Where each hook runs:

* ``async def`` hooks run on the event loop, in the job's own task context (``before_job`` and
  ``after_job`` of one job see the same :mod:`contextvars` context, and the job's code runs in a
  copy of it: a context variable a ``before_job`` sets is visible to the job).
* plain ``def`` ``before_job``/``after_job`` hooks of a **sync** job run on the job's own thread,
  right before and right after its function, in the job's context (what Django's
  ``close_old_connections`` needs: the connection is the thread's).  There ``outcome`` describes
  what the function did (a failing ``on_success`` callback may still fail the job afterwards).
* plain ``def`` hooks of an **async** job, and ``on_startup``/``on_shutdown``, run on the loop
  (keep them quick: the loop waits for them).

``after_job`` runs for every job whose ``before_job`` ran, whatever happened (finished, failed,
retried, stopped, put back at shutdown), before its outcome is stored.  A hook that raises is
logged with the job id and skipped: it never changes or loses the job's outcome.  An
``on_startup`` hook that raises stops the worker before it takes any job (exit status 1).


Code that runs inside the worker (task modules, batteries such as the delivery layer's connection
pools) registers process-wide cleanups with :func:`on_shutdown`; a job function describes itself in
the worker's log with :func:`log_description`.  These are the names job code and adapters import;
everything under ``asyncjobs.worker`` is the engine's and may change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from asyncjobs.protocol.transitions import Kind

if TYPE_CHECKING:
    from asyncjobs.worker.context import JobHandle

__all__ = [
    "HOOK_NAMES",
    "JOB_STATUS",
    "HookError",
    "JobOutcome",
    "JobStatus",
    "JobView",
    "StartupHookFailed",
    "WorkerHooks",
    "in_asyncjobs_job",
    "log_description",
    "on_shutdown",
    "remove_shutdown_hook",
]

log = logging.getLogger("asyncjobs.hooks")

HOOK_NAMES = ("on_startup", "on_shutdown", "before_job", "after_job")

LifecycleHook = Callable[[], Awaitable[None] | None]
BeforeJobHook = Callable[["JobView"], Awaitable[None] | None]
AfterJobHook = Callable[["JobView", "JobOutcome"], Awaitable[None] | None]


class HookError(ValueError):
    """A hook source cannot be loaded (bad module name, nothing hook-like in it)."""


class StartupHookFailed(RuntimeError):
    """An ``on_startup`` hook raised: the worker stops before taking any job."""


class JobStatus(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"  # send_stop_job_command
    RETRIED = "retried"  # back on its queue or scheduled for another attempt
    REQUEUED = "requeued"  # given back unfinished at shutdown


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one execution of a job ended, as ``after_job`` sees it."""

    status: JobStatus
    #: seconds the job's function ran (0.0 if it never started)
    duration: float
    #: what the function raised (``None`` if it returned); may be ``None`` on the loop for a
    #: failure that had no exception object (e.g. a kill-horse command)
    exception: BaseException | None = None
    #: the failure text as stored in RQ's Result (traceback), or ``None``
    exc_text: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.FINISHED


#: The public status of each way an execution ends (a stored Transition's kind): the one table the
#: hooks, the observer's metrics (``asyncjobs_jobs_total{status}``) and the logs read.
JOB_STATUS: Mapping[Kind, JobStatus] = {
    Kind.SUCCESS: JobStatus.FINISHED,
    Kind.FAILURE: JobStatus.FAILED,
    Kind.MAX_RETRIES: JobStatus.FAILED,
    Kind.STOPPED: JobStatus.STOPPED,
    Kind.RETRY: JobStatus.RETRIED,
    Kind.REQUEUE: JobStatus.REQUEUED,
}


class JobView:
    """What hooks see of the job being run: cheap, read-only fields, and the real RQ job on demand.

    ``meta`` is the job's ``meta`` dict as RQ decodes it (where Sentry's and OpenTelemetry's RQ
    integrations leave the producer's trace headers); :meth:`job` returns the ``rq.job.Job``
    (built from the hash the worker already read, no extra Redis round trip; ``get_current_job()``
    returns the same object).  ``state`` is a dict private to this execution for hooks to pass
    things from ``before_job`` to ``after_job``.  ``log_fields`` are added by ``before_job`` hooks to
    the worker's log lines that end this execution (``--log-format json`` keys); a ``trace_id`` among
    them is also named at the end of the failed-job line (the Sentry and OpenTelemetry adapters set it).
    """

    __slots__ = (
        "_handle", "description", "enqueued_at", "execution_id", "func_name", "id", "is_async",
        "log_fields", "queue", "retries_left", "state", "worker_name",
    )

    def __init__(
        self,
        *,
        job_id: str,
        queue: str,
        func_name: str,
        handle: JobHandle,
        worker_name: str,
        execution_id: str = "",
        description: str = "",
        enqueued_at: datetime | None = None,
        retries_left: int | None = None,
        is_async: bool = False,
    ) -> None:
        self.id = job_id
        self.queue = queue
        self.func_name = func_name
        self.worker_name = worker_name
        self.execution_id = execution_id
        self.description = description
        self.enqueued_at = enqueued_at
        self.retries_left = retries_left
        self.is_async = is_async
        self.state: dict[str, Any] = {}
        self.log_fields: dict[str, str] = {}
        self._handle = handle

    @property
    def meta(self) -> Mapping[str, Any]:
        meta = self._handle.job().meta
        return meta if isinstance(meta, dict) else {}

    def job(self) -> Any:
        """The ``rq.job.Job`` being run (bound to a synchronous Redis connection)."""
        return self._handle.job()

    def __repr__(self) -> str:
        return f"<JobView {self.id} {self.func_name} on {self.queue!r}>"


@dataclass(frozen=True)
class WorkerHooks:
    """Hooks given from Python: ``WorkerConfig(hooks=(WorkerHooks(before_job=f),))``."""

    on_startup: LifecycleHook | None = None
    on_shutdown: LifecycleHook | None = None
    before_job: BeforeJobHook | None = None
    after_job: AfterJobHook | None = None




# ------------------------------------------------------------------ process-wide shutdown cleanups
ShutdownHook = Callable[[], Awaitable[None]]

_shutdown_hooks: list[ShutdownHook] = []


def on_shutdown(hook: ShutdownHook) -> ShutdownHook:
    """Register ``hook`` (an async callable) to be awaited once when the worker shuts down, after its
    last job ended and its own ``on_shutdown`` hooks ran (idempotent; usable as a decorator)."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)
    return hook


def remove_shutdown_hook(hook: ShutdownHook) -> None:
    if hook in _shutdown_hooks:
        _shutdown_hooks.remove(hook)


def take_shutdown_hooks() -> list[ShutdownHook]:
    """The registered cleanups, in registration order, and forget them (the worker runs each once)."""
    taken = list(_shutdown_hooks)
    _shutdown_hooks.clear()
    return taken


# ------------------------------------------------------------------ describing a job in the log
F = TypeVar("F", bound=Callable[..., Any])

#: Attribute holding a job function's own describer: called with the job's arguments, returns text.
LOG_DESCRIPTION_ATTR = "__asyncjobs_log_description__"


def in_asyncjobs_job() -> bool:
    """True inside a job run by the asyncjobs worker, False elsewhere (a stock ``rq worker``, a plain
    call): e.g. to raise :class:`asyncjobs.Throttled`, which only the asyncjobs worker understands."""
    from asyncjobs.worker.context import in_job

    return in_job()


def log_description(describe: Callable[..., str]) -> Callable[[F], F]:
    """Decorate a job function so workers log ``describe(*args, **kwargs)`` instead of RQ's
    description (the delivery tasks use it to keep message bodies, codes and full recipients out
    of logs)."""

    def decorate(func: F) -> F:
        setattr(func, LOG_DESCRIPTION_ATTR, describe)
        return func

    return decorate
