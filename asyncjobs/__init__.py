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
    from asyncjobs.host.rq_compat import AsyncWorker
    from asyncjobs.limits import QueueControl, Throttled

__all__ = ["AsyncWorker", "QueueControl", "Throttled", "__version__", "get_current_job"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (e.g. by producers) pulls in nothing heavy.
    if name == "AsyncWorker":
        from asyncjobs.host.rq_compat import AsyncWorker

        return AsyncWorker
    if name in ("QueueControl", "Throttled"):
        from asyncjobs import limits

        return getattr(limits, name)
    if name == "get_current_job":
        from asyncjobs.worker.context import get_current_job

        return get_current_job
    raise AttributeError(f"module 'asyncjobs' has no attribute {name!r}")
