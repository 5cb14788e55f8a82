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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rq.timeouts import JobTimeoutException

from asyncjobs.protocol.codec import timeout_message
from asyncjobs.worker.context import JobHandle, pop_rq_job, push_rq_job, set_current


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class Executor:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="asyncjobs-sync")

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        handle: JobHandle,
    ) -> Any:
        set_current(handle)
        push_rq_job(handle)
        try:
            if _is_coroutine_function(func):
                return await self._run_async(func(*args, **kwargs), timeout)
            return await self._run_sync(func, args, kwargs, timeout, handle)
        finally:
            pop_rq_job()
            set_current(None)

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
        loop = asyncio.get_running_loop()
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

        future = loop.run_in_executor(self._pool, call)
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
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)
