"""Process-wide hooks that code running inside the worker can register.

Task modules (for example the delivery layer's connection pools) register an
async cleanup with :func:`on_shutdown`; the worker awaits every registered
callback once, after its last job finished, before it deregisters.  The worker
knows nothing of what the callbacks close.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]

_hooks: list[ShutdownHook] = []


def on_shutdown(hook: ShutdownHook) -> ShutdownHook:
    """Register ``hook`` to be awaited when the worker shuts down (idempotent)."""
    if hook not in _hooks:
        _hooks.append(hook)
    return hook


def remove_shutdown_hook(hook: ShutdownHook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


async def run_shutdown_hooks() -> None:
    """Await each registered hook in reverse registration order; errors are logged, not raised."""
    while _hooks:
        hook = _hooks.pop()
        try:
            await hook()
        except Exception:
            log.exception("shutdown hook %r failed", hook)
