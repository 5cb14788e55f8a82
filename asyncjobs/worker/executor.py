"""Run one job's function: ``async def`` on the loop, sync in a bounded thread pool.

Timeouts, stop-job and shutdown are enforced by the worker, which cancels the
task running :meth:`Executor.run`.  For a sync job that cancel is passed on to
its thread: the exception the worker names (``JobTimeoutException`` for a
timeout, ``SystemExit`` otherwise) is raised asynchronously inside it, which
stops pure-Python code at its next bytecode (a call blocked in C finishes
first, and its thread stays busy until then).  The interrupt can never land
after the job's function returned: see :class:`_SyncCall`.

A sync job's plain-``def`` ``before_job``/``after_job`` hooks (:class:`~asyncjobs.worker.hookset.ThreadHooks`)
run on its thread, in its context, right before and after the function; an interrupt can land
in a ``before_job`` hook (it then ends the job) but never in an ``after_job`` hook.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import inspect
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asyncjobs.worker.context import JobHandle, pop_rq_job, push_rq_job, reset_current, set_current

if TYPE_CHECKING:
    from asyncjobs.worker.hookset import ThreadHooks

log = logging.getLogger("asyncjobs.worker")


def _set_async_exc(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in that thread at its next bytecode; ``None`` withdraws a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None
    )


class ThreadPool:
    """A small bounded thread pool that resolves asyncio futures directly.

    Lighter than ``loop.run_in_executor`` (no concurrent.futures.Future chained
    to an asyncio one): each thread takes ``(callable, future, loop)`` from a
    queue and posts the outcome with one ``call_soon_threadsafe``.  Threads are
    started on demand, up to ``size``; idle ones wait on the queue.
    """

    def __init__(self, size: int, name: str = "asyncjobs-sync") -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.size:
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                self._idle -= 1 if self._idle else 0
        self._queue.put((fn, fut, loop))
        return fut

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get()
                if item is None:
                    return
                fn, fut, loop = item
                try:
                    result = fn()
                except BaseException as exc:  # delivered to the awaiting task
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                else:
                    loop.call_soon_threadsafe(_set_result, fut, result)
                del item, fn, fut
                with self._lock:
                    self._idle += 1
            except BaseException as exc:  # pragma: no cover - a stray interrupt must not kill the thread
                log.error("thread pool %s: ignored %r outside any job", self.name, exc)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class _SyncCall:
    """A sync job's function in a pool thread, interruptible from the loop without a race.

    :meth:`interrupt` and the end of the call hold the same lock: an interrupt
    is raised only while the function is still running, and one that was
    raised but not yet delivered when the function returned is withdrawn, so
    it can never land in the pool's own code (which would kill the thread).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handle: JobHandle,
        hooks: ThreadHooks | None = None,
    ):
        self.func, self.args, self.kwargs, self.handle, self.hooks = func, args, kwargs, handle, hooks
        self.ctx = contextvars.copy_context()
        self.lock = threading.Lock()
        self.thread_id: int | None = None
        self.finished = False
        self.abandoned = False  # interrupted while still queued: never starts
        self.t0 = 0.0

    def __call__(self) -> Any:
        with self.lock:
            if self.abandoned:
                self.finished = True
                return None
            self.thread_id = threading.get_ident()
        if self.hooks is None:
            return self._run()
        value: Any = None
        error: BaseException | None = None
        self.t0 = time.monotonic()
        try:
            value = self._run()
            return value
        except BaseException as exc:
            error = exc
            raise
        finally:
            # After the interruptible section: no interrupt can land in an after_job hook.
            self.ctx.run(self.hooks.after, value, error, time.monotonic() - self.t0)
            error = None  # no reference cycle through the traceback

    def _run(self) -> Any:
        try:
            # In the job's own context: RQ 3 keeps its current job in a context variable.
            token = self.ctx.run(push_rq_job, self.handle)
            try:
                if self.hooks is not None:
                    self.ctx.run(self.hooks.before)
                    self.t0 = time.monotonic()
                result = self.ctx.run(self.func, *self.args, **self.kwargs)
                if inspect.isawaitable(result):
                    # A sync function that returned a coroutine: RQ runs it in a fresh loop.
                    result = asyncio.run(_await(result))
                return result
            finally:
                self.ctx.run(pop_rq_job, token)
        finally:
            with self.lock:
                self.finished = True
                if self.thread_id is not None:
                    _set_async_exc(self.thread_id, None)

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        with self.lock:
            if self.finished:
                return False
            if self.thread_id is None:
                self.abandoned = True
                return False
            _set_async_exc(self.thread_id, exc_type)
            return True


class LoopBlockedError(Exception):
    """Raised inside an ``async def`` job that held the event loop past ``--max-loop-lag``.

    The loop watchdog (a thread) raises it in the loop's thread when the loop is blocked inside a
    job's own code, so that job fails and the others, heartbeats and signals (SIGTERM) go on.
    Python code is interrupted at its next bytecode; a call blocked in C finishes first.
    """

    max_lag: float = 10.0  # set by the watchdog: the exception is raised by type, without arguments

    def __str__(self) -> str:
        return (
            f"the job blocked the event loop that every job in the worker shares for more than "
            f"{self.max_lag:g} s (--max-loop-lag); it was interrupted. Move CPU-bound or blocking work "
            "to a plain def job (run in a thread) or to asyncio.to_thread()"
        )


def interrupt_blocked_job(loop_thread: int) -> bool:
    """If the loop thread is running a job's own code (under :meth:`Executor.run`), raise
    :class:`LoopBlockedError` there and return True; never when it is in the worker's or asyncio's code."""
    frame = sys._current_frames().get(loop_thread)
    if frame is None or _is_engine_code(frame.f_code.co_filename):
        return False
    f: Any = frame
    inner: Any = None  # the frame f called
    while f is not None:
        if f.f_code is _RUN_CODE:
            if inner is not None and _is_worker_code(inner.f_code.co_filename):
                return False  # Executor.run's own steps (the pool starting a thread), not the job's code
            _set_async_exc(loop_thread, LoopBlockedError)
            return True
        inner, f = f, f.f_back
    return False


_ENGINE_DIRS = tuple(
    d + os.sep for d in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(asyncio.__file__))
)


def _is_engine_code(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_ENGINE_DIRS)


_WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_worker_code(filename: str) -> bool:
    """The engine proper (``asyncjobs/worker/``), not the package's job functions (``asyncjobs.tasks``)."""
    return os.path.abspath(filename).startswith(_WORKER_DIR)


class JobExited(Exception):
    """A job raised ``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException``: only that job fails.

    In a work-horse (stock RQ) such an exception ends one job; here it would reach the
    event loop shared by every job in flight and stop the worker.  ``original`` is the
    job's exception, which the failure is recorded with (its traceback, as stock).
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


class Executor:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPool(threads)

    @staticmethod
    def is_async(func: Callable[..., Any]) -> bool:
        """True if ``func`` runs on the loop (``async def``), False if on a pool thread."""
        return _is_coroutine_function(func)

    async def run_in_thread(self, fn: Callable[[], Any]) -> Any:
        return await self._pool.submit(fn)

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        handle: JobHandle,
        interrupt: Callable[[], type[BaseException]] = lambda: SystemExit,
        thread_hooks: ThreadHooks | None = None,
    ) -> Any:
        """Run the job's function; when this task is cancelled, a sync job's thread gets ``interrupt()``.
        ``thread_hooks`` (sync jobs only) run on the job's thread around the function."""
        token = set_current(handle)
        try:
            if _is_coroutine_function(func):
                rq_token = push_rq_job(handle)  # per task on the loop; a sync job pushes in its own thread
                try:
                    return await func(*args, **kwargs)
                finally:
                    pop_rq_job(rq_token)
            call = _SyncCall(func, args, kwargs, handle, thread_hooks)
            future = self._pool.submit(call)
            try:
                return await future
            except asyncio.CancelledError:
                # Timeout, stop-job or shutdown: interrupt the thread as far as Python allows.
                call.interrupt(interrupt())
                raise
        except (Exception, asyncio.CancelledError):
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, ...: the job's, never the worker's
            raise JobExited(exc) from None
        finally:
            reset_current(token)

    def shutdown(self) -> None:
        self._pool.shutdown()


async def _await(awaitable: Any) -> Any:
    return await awaitable


_RUN_CODE = Executor.run.__code__


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)
