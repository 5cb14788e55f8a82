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
