"""Run one job's function: ``async def`` on the loop, sync in a bounded thread pool.

Timeouts: an async job is cancelled at its deadline.  A sync job cannot be
killed; at its deadline it is reported failed with RQ's timeout message, and
``JobTimeoutException`` is raised asynchronously inside its thread, which stops
pure-Python code at its next bytecode (a call blocked in C finishes first, and
its thread stays busy until then).
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

from rq.timeouts import JobTimeoutException

from asyncjobs.protocol.codec import timeout_message
from asyncjobs.worker.context import JobHandle, pop_rq_job, push_rq_job, reset_current, set_current


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


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

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Executor:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPool(threads)

    async def run_in_thread(self, fn: Callable[[], Any]) -> Any:
        return await self._pool.submit(fn)

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        handle: JobHandle,
    ) -> Any:
        token = set_current(handle)
        try:
            if _is_coroutine_function(func):
                push_rq_job(handle)  # per task on the loop; a sync job pushes in its own thread
                try:
                    return await self._run_async(func(*args, **kwargs), timeout)
                finally:
                    pop_rq_job()
            return await self._run_sync(func, args, kwargs, timeout, handle)
        finally:
            reset_current(token)

    async def _run_async(self, coro: Any, timeout: float | None) -> Any:
        if timeout is None:
            return await coro
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await coro
        except TimeoutError:
            if not deadline.expired():
                raise  # the job's own TimeoutError, not ours
            raise JobTimeoutException(timeout_message(timeout)) from None

    async def _run_sync(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        handle: JobHandle,
    ) -> Any:
        ctx = contextvars.copy_context()
        # [thread id, finished]; written by the job's thread, read on the loop.
        state: list[Any] = [None, False]

        def call() -> Any:
            state[0] = threading.get_ident()
            push_rq_job(handle)
            try:
                result = ctx.run(func, *args, **kwargs)
                if inspect.isawaitable(result):
                    # A sync function that returned a coroutine: RQ runs it in a fresh loop.
                    result = asyncio.run(_await(result))
                return result
            finally:
                state[1] = True
                pop_rq_job()

        future = self._pool.submit(call)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await future
        except TimeoutError:
            if not deadline.expired():
                raise  # the job's own TimeoutError, not ours
            if state[0] is not None and not state[1]:
                _raise_in_thread(state[0], JobTimeoutException)
            raise JobTimeoutException(timeout_message(timeout or 0)) from None
        except asyncio.CancelledError:
            # Stop-job or cold shutdown: interrupt the thread as far as Python allows.
            if state[0] is not None and not state[1]:
                _raise_in_thread(state[0], SystemExit)
            raise

    def shutdown(self) -> None:
        self._pool.shutdown()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)
