"""Job callbacks (``on_success``, ``on_failure``, ``on_stopped``) and exception handlers.

Signatures are stock RQ's: ``(job, connection, result)``, ``(job, connection,
type, value, traceback)`` and ``(job, connection)``; ``connection`` is a
synchronous ``redis.Redis``.  Sync callbacks run in the job thread pool,
``async def`` ones on the loop, each under its own timeout (default 60 s).
Callback names come from job data, so they are resolved like job functions
(under ``--allow-module`` when it is set); exception handlers come from the
worker's own command line and are trusted.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from rq.timeouts import JobTimeoutException

from asyncjobs.protocol.codec import CallbackSpec, JobRecord, timeout_message
from asyncjobs.worker.context import JobHandle
from asyncjobs.worker.executor import Executor, JobExited
from asyncjobs.worker.resolver import FunctionResolver

log = logging.getLogger("asyncjobs.worker")


def import_attribute(dotted: str) -> Callable[..., Any]:
    module_name, _, attr = dotted.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    return getattr(obj, attr)  # type: ignore[no-any-return]


class Callbacks:
    def __init__(
        self,
        executor: Executor,
        connection_factory: Callable[[], Any],
        exception_handlers: tuple[str, ...] = (),
        resolver: FunctionResolver | None = None,
    ) -> None:
        self.executor = executor
        self.connection_factory = connection_factory
        self.handlers = [import_attribute(h) for h in exception_handlers]
        self.resolver = resolver or FunctionResolver()

    async def _invoke(self, spec: CallbackSpec, handle: JobHandle, *args: Any) -> None:
        func = self.resolver.resolve_name(spec.name)
        timeout = float(spec.timeout) if spec.timeout and spec.timeout > 0 else None
        job = handle.job()
        conn = self.connection_factory()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if inspect.iscoroutinefunction(func):
                    await func(job, conn, *args)
                else:
                    await self.executor.run_in_thread(lambda: func(job, conn, *args))
        except TimeoutError:
            if not deadline.expired():
                raise
            raise JobTimeoutException(timeout_message(timeout or 0)) from None
        except (Exception, asyncio.CancelledError):
            raise
        except BaseException as exc:  # a callback's sys.exit()/KeyboardInterrupt: its job's, never the worker's
            raise JobExited(exc) from exc

    async def success(self, record: JobRecord, handle: JobHandle, value: Any) -> None:
        if record.success_callback is not None:
            await self._invoke(record.success_callback, handle, value)

    async def failure(self, record: JobRecord, handle: JobHandle, exc: BaseException) -> None:
        if record.failure_callback is not None:
            await self._invoke(record.failure_callback, handle, type(exc), exc, exc.__traceback__)

    async def stopped(self, record: JobRecord, handle: JobHandle) -> None:
        if record.stopped_callback is None:
            return
        try:
            await self._invoke(record.stopped_callback, handle)
        except Exception:
            log.exception("stopped callback of job %s failed", record.id)

    async def exception_handlers(self, record: JobRecord, handle: JobHandle, exc: BaseException) -> None:
        if not self.handlers:
            return
        job = handle.job()
        for h in self.handlers:
            try:
                result = await asyncio.to_thread(h, job, type(exc), exc, exc.__traceback__)
            except asyncio.CancelledError:
                raise
            except BaseException:  # SystemExit/KeyboardInterrupt of a handler too: never the worker's
                log.exception("exception handler %r failed for job %s", h, record.id)
                break
            if result is False:
                break
