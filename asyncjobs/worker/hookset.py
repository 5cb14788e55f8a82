"""The engine's side of lifecycle hooks: loading hook sources and running them around jobs.

The hooks themselves, and what they see (:class:`~asyncjobs.hooks.JobView`,
:class:`~asyncjobs.hooks.JobOutcome`), are the public surface in :mod:`asyncjobs.hooks`, which
says where each hook runs.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from asyncjobs.hooks import (
    HOOK_NAMES,
    JOB_STATUS,
    AfterJobHook,
    BeforeJobHook,
    HookError,
    JobOutcome,
    JobStatus,
    JobView,
    LifecycleHook,
    StartupHookFailed,
    take_shutdown_hooks,
)
from asyncjobs.protocol.codec import JobRecord
from asyncjobs.protocol.transitions import Kind, retries_exhausted, should_retry_on_exception
from asyncjobs.worker.admission import CancelReason
from asyncjobs.worker.executor import Executor

__all__ = ["HookSet", "ThreadHooks", "add_auto_adapters", "load_hooks"]

log = logging.getLogger("asyncjobs.worker.hooks")

#: An ``async def`` hook still running after this many seconds is abandoned (logged as failed),
#: so that a hung hook cannot keep a job's outcome from being stored.
ASYNC_HOOK_TIMEOUT = 60.0

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
        """This worker's ``on_shutdown`` hooks, then the process-wide cleanups registered with
        :func:`asyncjobs.hooks.on_shutdown` (each in reverse order): one loop, one timeout, one log line
        per failure."""
        hooks: list[LifecycleHook] = [*reversed(self.on_shutdown), *reversed(take_shutdown_hooks())]
        for fn in hooks:
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(_as_coro(result), ASYNC_HOOK_TIMEOUT)
            except Exception:
                log.exception("on_shutdown hook %s failed", _name(fn))

    # ------------------------------------------------------------------- jobs
    def on_thread(self, fn: Callable[..., Any], job: JobView) -> bool:
        """True when hook ``fn`` of ``job`` runs on the job's thread (a plain def of a sync job)."""
        return not job.is_async and not Executor.is_async(fn)

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
def outcome_of_transition(
    kind: Kind, duration: float, exception: BaseException | None = None, exc_text: str | None = None
) -> JobOutcome:
    """The outcome the worker stores (a :class:`~asyncjobs.protocol.transitions.Kind`), for hooks."""
    status = JOB_STATUS[kind]
    if status is JobStatus.FINISHED:
        exception = exc_text = None
    return JobOutcome(status, duration, exception, exc_text)


def outcome_of_call(
    record: JobRecord,
    value: Any,
    error: BaseException | None,
    duration: float,
    *,
    cancel_reason: CancelReason | None,
) -> JobOutcome:
    """What a sync job's function did, as the worker will record it (for hooks on its thread): the
    retry decisions are the transitions' own (:func:`~asyncjobs.protocol.transitions.retries_exhausted`,
    :func:`~asyncjobs.protocol.transitions.should_retry_on_exception`), made here only earlier."""
    if error is None:
        from rq.job import Retry

        if isinstance(value, Retry):
            done = retries_exhausted(record, value.max)
            return JobOutcome(JobStatus.FAILED if done else JobStatus.RETRIED, duration)
        return JobOutcome(JobStatus.FINISHED, duration)
    import traceback

    if cancel_reason is CancelReason.STOP:
        return JobOutcome(JobStatus.STOPPED, duration, error, None)
    if cancel_reason is CancelReason.GIVE_BACK:
        return JobOutcome(JobStatus.REQUEUED, duration, error, None)
    text = "".join(traceback.format_exception(error))
    retry = should_retry_on_exception(record)
    return JobOutcome(JobStatus.RETRIED if retry else JobStatus.FAILED, duration, error, text)
