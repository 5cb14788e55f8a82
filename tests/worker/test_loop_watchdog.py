"""The loop watchdog interrupts a job's own code that holds the loop, never the engine's."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from asyncjobs.worker.context import JobHandle
from asyncjobs.worker.executor import Executor, interrupt_blocked_job


def _run_loop_thread(coro_factory: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def main() -> None:
        try:
            result.append(asyncio.run(coro_factory()))
        except BaseException as exc:  # what the loop thread ended with
            result.append(exc)

    thread = threading.Thread(target=main, name="test-loop")
    thread.start()
    return thread, result


def _handle() -> JobHandle:
    return JobHandle("job-1", {}, lambda: None, None)


def test_the_engine_starting_a_pool_thread_is_not_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found under cProfile: the loop sat >10 s in Thread.start (the pool starting a thread for a sync
    job, called from Executor.run); the watchdog took the stdlib frame on top for the job's code and
    raised LoopBlockedError inside the pool's own locking, and the worker never ran again."""
    entered, release = threading.Event(), threading.Event()
    real_start = threading.Thread.start
    executor = Executor(2)

    async def submit_one() -> Any:
        return await executor.run(lambda: "ran", (), {}, handle=_handle())

    def slow_start(self: threading.Thread) -> None:
        if threading.current_thread().name == "test-loop":  # the pool, from the loop's thread
            entered.set()
            release.wait(10)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", slow_start)  # before the loop thread can submit
    loop_thread, result = _run_loop_thread(submit_one)
    try:
        assert entered.wait(10)
        assert loop_thread.ident is not None
        assert interrupt_blocked_job(loop_thread.ident) is False
    finally:
        release.set()
        loop_thread.join(10)
        executor.shutdown()
    assert result == ["ran"]


def test_an_async_job_holding_the_loop_is_interrupted() -> None:
    started = threading.Event()
    executor = Executor(1)

    async def hog() -> None:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # pure Python: interruptible at the next bytecode
            pass

    loop_thread, result = _run_loop_thread(lambda: executor.run(hog, (), {}, handle=_handle()))
    assert started.wait(10)
    time.sleep(0.05)
    assert loop_thread.ident is not None
    assert interrupt_blocked_job(loop_thread.ident) is True
    loop_thread.join(10)
    assert type(result[0]).__name__ == "LoopBlockedError"
