"""Job functions for the security tests; workers run them with ``--allow-module tests.security.jobs``.

Everything a hostile payload might try to reach lives *outside* this module
(``tests.security.outside``), so a test can tell "refused" from "ran".
"""

from __future__ import annotations

import asyncio
import os  # noqa: F401 - a module object reachable through this one (tests walk through it)
import pickle
import threading
from typing import Any

from rq import get_current_job

from tests.security.outside import touch as imported_touch  # noqa: F401 - re-exported on purpose


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def echo(value: Any) -> Any:
    return value


def boom(message: str = "boom") -> None:
    raise ValueError(message)


def nbytes(value: bytes) -> int:
    return len(value)


def read_meta() -> str:
    """Touches ``job.meta`` (RQ unpickles it with the worker's serializer)."""
    job = get_current_job()
    assert job is not None
    return repr(sorted(job.meta))


def success_callback(job: Any, connection: Any, result: Any) -> None:
    connection.set(f"callback:allowed:{job.id}", repr(result))


class ThreadRecordingSerializer:
    """Pickle, recording whether each ``loads`` ran on the main thread (the worker's event loop)."""

    calls: list[tuple[int, bool]] = []

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        ThreadRecordingSerializer.calls.append((len(data), threading.current_thread() is threading.main_thread()))
        return pickle.loads(data)


class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}"


class Adder:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self, value: int) -> int:
        return value + self.offset


async def nap(seconds: float) -> float:
    """An async job that is still running while a hostile job beside it is decoded."""
    await asyncio.sleep(seconds)
    return seconds


def greet(*, greeting: str = "hello") -> str:
    """A keyword-only default a hostile payload would change (``__kwdefaults__``) for later jobs."""
    return greeting


class Settings:
    """A module-level settings object (and class attribute) a hostile payload would change for later jobs."""

    mask = True


SETTINGS = Settings()


def settings_mask() -> tuple[bool, bool]:
    return SETTINGS.mask, Settings.mask


class Abort(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt (as some libraries define)."""


def exit_sync(code: int) -> None:
    """What argparse, click or Django's call_command do on bad input: sys.exit()."""
    raise SystemExit(code)


async def exit_async(code: int) -> None:
    await asyncio.sleep(0)
    raise SystemExit(code)


def interrupt_sync() -> None:
    raise KeyboardInterrupt


async def interrupt_async() -> None:
    await asyncio.sleep(0)
    raise KeyboardInterrupt


async def abort_async() -> None:
    raise Abort("custom")


async def until_key(key: str) -> str:
    """Runs until the test sets ``key`` in the job's Redis (a job that is surely in flight meanwhile)."""
    job = get_current_job()
    assert job is not None
    while not job.connection.exists(key):
        await asyncio.sleep(0.05)
    return key


def exit_callback(job: Any, connection: Any, result: Any) -> None:
    """An on_success callback that calls sys.exit()."""
    raise SystemExit(4)


async def spin_async() -> None:
    """CPU work in an ``async def`` job: it never yields to the event loop."""
    while True:
        pass
