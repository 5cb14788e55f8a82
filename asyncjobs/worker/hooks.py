"""Lifecycle hooks: code of yours that the worker runs at start, at stop, and around every job.

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
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncjobs.worker.context import JobHandle

__all__ = [
    "HOOK_NAMES",
    "HookError",
    "HookSet",
    "JobOutcome",
    "JobStatus",
    "JobView",
    "StartupHookFailed",
    "WorkerHooks",
    "load_hooks",
]

log = logging.getLogger("asyncjobs.worker.hooks")

HOOK_NAMES = ("on_startup", "on_shutdown", "before_job", "after_job")

#: An ``async def`` hook still running after this many seconds is abandoned (logged as failed),
#: so that a hung hook cannot keep a job's outcome from being stored.
ASYNC_HOOK_TIMEOUT = 60.0

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


class JobView:
    """What hooks see of the job being run: cheap, read-only fields, and the real RQ job on demand.

    ``meta`` is the job's ``meta`` dict as RQ decodes it (where Sentry's and OpenTelemetry's RQ
    integrations leave the producer's trace headers); :meth:`job` returns the ``rq.job.Job``
    (built from the hash the worker already read, no extra Redis round trip; ``get_current_job()``
    returns the same object).  ``state`` is a dict private to this execution for hooks to pass
    things from ``before_job`` to ``after_job``.
    """

    __slots__ = (
        "_handle", "description", "enqueued_at", "execution_id", "func_name", "id", "is_async",
        "queue", "retries_left", "state", "worker_name",
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


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module else str(qual)


def _import_source(spec: str) -> Any:
    """``myapp.worker_hooks`` (a module) or ``myapp.hooks.SENTRY`` / ``myapp.hooks:SENTRY`` (an object)."""
    text = spec.strip()
    if not text:
        raise HookError("empty hooks name: give a module, e.g. --hooks myapp.worker_hooks")
    if ":" in text:
        module_name, _, attr = text.partition(":")
    else:
        module_name, attr = text, ""
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if attr or "." not in module_name or exc.name != module_name:
            raise HookError(f"cannot import hooks module {module_name!r}: {exc}") from exc
        parent, _, attr = module_name.rpartition(".")
        try:
            obj = importlib.import_module(parent)
        except ImportError as exc2:
            raise HookError(f"cannot import hooks {text!r}: {exc}") from exc2
    except ImportError as exc:
        raise HookError(f"cannot import hooks module {module_name!r}: {exc}") from exc
    if attr:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise HookError(f"hooks {text!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


@dataclass
class HookSet:
    """The hooks of one worker, in registration order; empty unless hooks were given."""

    on_startup: list[LifecycleHook] = field(default_factory=list)
    on_shutdown: list[LifecycleHook] = field(default_factory=list)
    before_job: list[BeforeJobHook] = field(default_factory=list)
    after_job: list[AfterJobHook] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.on_startup or self.on_shutdown or self.before_job or self.after_job)

    @property
    def around_jobs(self) -> bool:
        return bool(self.before_job or self.after_job)

    def add(self, source: object) -> bool:
        """Add the hooks ``source`` defines (a dotted name, a module, a :class:`WorkerHooks`, any object);
        False if they were all added already."""
        label = source if isinstance(source, str) else getattr(source, "__name__", None) or repr(source)
        obj = _import_source(source) if isinstance(source, str) else source
        found = new = False
        for hook_name in HOOK_NAMES:
            fn = getattr(obj, hook_name, None)
            if fn is None:
                continue
            if not callable(fn):
                raise HookError(f"hooks {label!r}: {hook_name} is {fn!r}, not a function")
            hooks: list[Any] = getattr(self, hook_name)
            if fn not in hooks:  # the same module given twice (or auto-enabled) runs once
                hooks.append(fn)
                new = True
            found = True
        if not found:
            kind = "module" if isinstance(obj, ModuleType) else "object"
            raise HookError(
                f"hooks {label!r}: the {kind} defines none of {', '.join(HOOK_NAMES)}; "
                "define at least one of them (see the README's 'Hooks' section)"
            )
        if new:
            self.sources.append(str(label))
        return new

    # ----------------------------------------------------------------- lifecycle
    async def startup(self) -> None:
        for fn in self.on_startup:
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.exception("on_startup hook %s failed", _name(fn))
                raise StartupHookFailed(f"on_startup hook {_name(fn)} failed: {exc!r}") from exc

    async def shutdown(self) -> None:
        for fn in reversed(self.on_shutdown):
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(_as_coro(result), ASYNC_HOOK_TIMEOUT)
            except Exception:
                log.exception("on_shutdown hook %s failed", _name(fn))

    # ------------------------------------------------------------------- jobs
    def on_thread(self, fn: Callable[..., Any], job: JobView) -> bool:
        """True when hook ``fn`` of ``job`` runs on the job's thread (a plain def of a sync job)."""
        return not job.is_async and not _is_async(fn)

    def thread_hooks(
        self, job: JobView, classify: Callable[[Any, BaseException | None, float], JobOutcome]
    ) -> ThreadHooks | None:
        """The hooks to run on a sync job's own thread, or None if there are none."""
        before = [fn for fn in self.before_job if self.on_thread(fn, job)]
        after = [fn for fn in self.after_job if self.on_thread(fn, job)]
        return ThreadHooks(job, before, after, classify) if before or after else None

    async def before(self, job: JobView) -> None:
        """The loop's share of ``before_job`` (all hooks of an async job; async hooks of a sync job)."""
        for fn in self.before_job:
            if not self.on_thread(fn, job):
                await _call_on_loop("before_job", fn, job, (job,))

    async def after(self, job: JobView, outcome: JobOutcome) -> None:
        for fn in self.after_job:
            if not self.on_thread(fn, job):
                await _call_on_loop("after_job", fn, job, (job, outcome))


async def _as_coro(aw: Awaitable[Any]) -> Any:
    return await aw


def _job_extra(job: JobView) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue, "func": job.func_name, "worker": job.worker_name}


async def _call_on_loop(kind: str, fn: Callable[..., Any], job: JobView, args: tuple[Any, ...]) -> None:
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            # Awaited in this task (not wait_for's own task before 3.12), so context variables the
            # hook sets stay set for the job; a hung hook is abandoned after the timeout.
            async with asyncio.timeout(ASYNC_HOOK_TIMEOUT):
                await result
    except TimeoutError:
        log.error("%s hook %s for job %s still running after %.0fs: abandoned",
                  kind, _name(fn), job.id, ASYNC_HOOK_TIMEOUT, extra=_job_extra(job))
    except Exception:
        log.exception("%s hook %s failed for job %s", kind, _name(fn), job.id, extra=_job_extra(job))


class ThreadHooks:
    """A sync job's ``before_job``/``after_job`` hooks, run by the executor on the job's thread."""

    __slots__ = ("_after", "_before", "_classify", "job")

    def __init__(
        self,
        job: JobView,
        before: list[BeforeJobHook],
        after: list[AfterJobHook],
        classify: Callable[[Any, BaseException | None, float], JobOutcome],
    ) -> None:
        self.job, self._before, self._after, self._classify = job, before, after, classify

    def before(self) -> None:
        """Errors are logged; an interrupt (timeout, stop) raised in a hook ends the job as usual."""
        for fn in self._before:
            try:
                fn(self.job)
            except Exception:
                log.exception("before_job hook %s failed for job %s", _name(fn), self.job.id,
                              extra=_job_extra(self.job))

    def after(self, value: Any, error: BaseException | None, duration: float) -> None:
        if not self._after:
            return
        try:
            outcome = self._classify(value, error, duration)
        except Exception:  # pragma: no cover - a bug of ours must not break the job
            log.exception("could not describe the outcome of job %s for after_job hooks", self.job.id)
            return
        for fn in self._after:
            try:
                fn(self.job, outcome)
            except Exception:
                log.exception("after_job hook %s failed for job %s", _name(fn), self.job.id,
                              extra=_job_extra(self.job))


def load_hooks(sources: Iterable[object]) -> HookSet:
    """A :class:`HookSet` from hook sources; raises :class:`HookError` naming a bad one."""
    hooks = HookSet()
    for source in sources:
        hooks.add(source)
    return hooks


#: Integrations enabled without ``--hooks`` when their library is set up for RQ: (module that must
#: already be imported, adapter module whose ``auto_enable()`` says whether to add it).
AUTO_ADAPTERS = (
    ("sentry_sdk", "asyncjobs.observability.sentry"),
    ("opentelemetry_instrumentation_rq", "asyncjobs.observability.otel"),
)


def add_auto_adapters(hooks: HookSet) -> list[str]:
    """Add the built-in adapters whose library is initialised for RQ (see :data:`AUTO_ADAPTERS`).

    An adapter that cannot work with the installed version of its library (it raises
    :class:`~asyncjobs._extras.UnsupportedVersionError` on import) is left out with one warning
    naming the version and the fix, here at start-up, rather than failing around every job."""
    import sys

    from asyncjobs._extras import UnsupportedVersionError

    added = []
    for library, adapter in AUTO_ADAPTERS:
        if library not in sys.modules:
            continue  # never import a library the application did not
        try:
            module = importlib.import_module(adapter)
            if not module.auto_enable():
                continue
        except UnsupportedVersionError as exc:
            log.warning("%s is not enabled: %s", adapter, exc)
            continue
        except Exception:
            log.exception("could not check whether to enable %s", adapter)
            continue
        if hooks.add(module):
            added.append(adapter)
    return added


# ------------------------------------------------------------------ outcomes
_KIND_STATUS = {
    "success": JobStatus.FINISHED,
    "failure": JobStatus.FAILED,
    "max_retries": JobStatus.FAILED,
    "stopped": JobStatus.STOPPED,
    "retry": JobStatus.RETRIED,
    "requeue": JobStatus.REQUEUED,
}


def outcome_of_transition(
    kind: str, duration: float, exception: BaseException | None = None, exc_text: str | None = None
) -> JobOutcome:
    """The outcome the worker stores (a :class:`~asyncjobs.protocol.transitions.Kind`), for hooks."""
    status = _KIND_STATUS[str(kind)]
    if status is JobStatus.FINISHED:
        exception = exc_text = None
    return JobOutcome(status, duration, exception, exc_text)


def outcome_of_call(
    value: Any,
    error: BaseException | None,
    duration: float,
    *,
    retries_left: int | None,
    number_of_retries: int | None,
    cancel_reason: str | None,
) -> JobOutcome:
    """What a sync job's function did, as the worker will record it (for hooks on its thread)."""
    if error is None:
        from rq.job import Retry

        if isinstance(value, Retry):
            done = (number_of_retries or 0) >= value.max and bool(number_of_retries)
            return JobOutcome(JobStatus.FAILED if done else JobStatus.RETRIED, duration)
        return JobOutcome(JobStatus.FINISHED, duration)
    import traceback

    text = "".join(traceback.format_exception(error))
    if cancel_reason == "stop":
        return JobOutcome(JobStatus.STOPPED, duration, error, None)
    if cancel_reason == "give_back":
        return JobOutcome(JobStatus.REQUEUED, duration, error, None)
    retry = retries_left is not None and retries_left > 0
    return JobOutcome(JobStatus.RETRIED if retry else JobStatus.FAILED, duration, error, text)
