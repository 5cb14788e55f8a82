"""Jobs for the operations tests: side effects recorded outside Redis, so a failover cannot hide them."""

from __future__ import annotations

import asyncio
import os


def _append(path: str, token: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{token}\n".encode())  # one O_APPEND write: lines never interleave
    finally:
        os.close(fd)


async def ledger(path: str, token: str, seconds: float = 0.0) -> str:
    """Wait ``seconds``, then append ``token`` to the ledger file (the job's one side effect)."""
    await asyncio.sleep(seconds)
    _append(path, token)
    return token


def sync_ledger(path: str, token: str, seconds: float = 0.0) -> str:
    import time

    time.sleep(seconds)
    _append(path, token)
    return token


async def ok(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


def fail(x: int) -> int:
    raise ValueError(f"failing on purpose: {x}")


async def block_loop(seconds: float) -> str:
    """Blocks the event loop (a blocking call inside ``async def``): what /livez must catch."""
    import time

    time.sleep(seconds)
    return "unblocked"


async def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """Run until ``path`` exists (the test decides when the job ends), polling without blocking."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not os.path.exists(path):  # noqa: ASYNC240 - a stat, polled
        if loop.time() > deadline:
            raise TimeoutError(f"{path} never appeared")
        await asyncio.sleep(0.05)
    return "done"


_LEAKED: list[bytearray] = []


def leak(path: str, token: str, megabytes: int) -> int:
    """Keep ``megabytes`` MB alive for the rest of the process (a leak on purpose); record the token;
    return the process's RSS in bytes after leaking."""
    from asyncjobs.worker.recycle import current_rss

    block = bytearray(megabytes << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just reserved
    _LEAKED.append(block)
    _append(path, token)
    return current_rss()


from rq.job import Job as _RQJob  # noqa: E402


class AuditedJob(_RQJob):
    """A custom RQ Job class (``--job-class``), whose overrides asyncjobs cannot run."""


async def span(path: str, token: str, seconds: float) -> str:
    """Append ``+<token>`` when it starts and ``-<token>`` when it ends: the ledger shows how many ran at once."""
    _append(path, f"+{token}")
    await asyncio.sleep(seconds)
    _append(path, f"-{token}")
    return token
