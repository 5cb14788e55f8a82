"""asyncjobs: an asyncio-native, drop-in replacement for ``rq worker``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from asyncjobs._extras import DISTRIBUTION

try:
    __version__ = version(DISTRIBUTION)  # one source: the installed distribution's metadata
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from asyncjobs.hooks import (
        JobOutcome,
        JobStatus,
        JobView,
        WorkerHooks,
        log_description,
        on_shutdown,
    )
    from asyncjobs.host.rq_compat import AsyncWorker
    from asyncjobs.host.runner import run_worker
    from asyncjobs.limits import QueueControl, Throttled
    from asyncjobs.worker.config import WorkerConfig
    from asyncjobs.worker.context import get_current_job
    from asyncjobs.worker.worker import Worker

#: The public names, and the module each lives in (imported on first use: importing the package, as
#: producers do, pulls in nothing heavy).
_WHERE = {
    "AsyncWorker": "asyncjobs.host.rq_compat",
    "run_worker": "asyncjobs.host.runner",
    "Worker": "asyncjobs.worker.worker",
    "WorkerConfig": "asyncjobs.worker.config",
    "get_current_job": "asyncjobs.worker.context",
    "QueueControl": "asyncjobs.limits",
    "Throttled": "asyncjobs.limits",
    "JobOutcome": "asyncjobs.hooks",
    "JobStatus": "asyncjobs.hooks",
    "JobView": "asyncjobs.hooks",
    "WorkerHooks": "asyncjobs.hooks",
    "log_description": "asyncjobs.hooks",
    "on_shutdown": "asyncjobs.hooks",
}

__all__ = [
    "AsyncWorker",
    "JobOutcome",
    "JobStatus",
    "JobView",
    "QueueControl",
    "Throttled",
    "Worker",
    "WorkerConfig",
    "WorkerHooks",
    "__version__",
    "get_current_job",
    "log_description",
    "on_shutdown",
    "run_worker",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'asyncjobs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(where), name)
