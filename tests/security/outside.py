"""Functions that a worker started with ``--allow-module tests.security.jobs`` must never run.

Each leaves a trace in Redis (through the connection RQ passes to callbacks)
or on disk, so a test can prove it did not run.
"""

from __future__ import annotations

from typing import Any


def mark_callback(job: Any, connection: Any, *args: Any) -> None:
    connection.set(f"callback:outside:{job.id}", "ran")


def touch(path: str) -> str:
    with open(path, "w") as fh:
        fh.write("ran")
    return path
