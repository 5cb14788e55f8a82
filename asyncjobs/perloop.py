"""One value per running event loop (and process): the batteries' connection pools and engines.

Connections belong to the event loop that opened them.  The asyncjobs worker runs every job on one
long-lived loop, so its jobs share one value; a stock ``rq worker`` runs each coroutine job on a
fresh loop, so a value left on a loop that no longer runs is dropped (``discard``, which may close
it on that loop from a helper thread) and replaced; after ``fork`` the parent's values are
forgotten (``forget``: no I/O, the connections are the parent's).  The first value registers
:meth:`PerLoop.aclose_all` (or the owner's ``cleanup``) with :func:`asyncjobs.hooks.on_shutdown`, so the worker closes them
when it stops.  The delivery senders (:mod:`asyncjobs.delivery.runtime`) and the outbox engine
(:mod:`asyncjobs.outbox.notifications`) both keep theirs here.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``get()`` returns the running loop's value, made by ``make()`` on first use."""

    def __init__(
        self,
        make: Callable[[], T],
        *,
        close: Callable[[T], Awaitable[None]],
        discard: Callable[[T, asyncio.AbstractEventLoop], None] = lambda value, loop: None,
        forget: Callable[[T], None] = lambda value: None,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._make, self._close, self._discard, self._forget = make, close, discard, forget
        #: registered with on_shutdown when a value is made (default: :meth:`aclose_all`)
        self._cleanup = cleanup or self.aclose_all
        self._lock = threading.Lock()
        self._items: dict[int, tuple[asyncio.AbstractEventLoop, int, T]] = {}

    def get(self, valid: Callable[[T], bool] | None = None) -> T:
        """The running loop's value; one that fails ``valid`` (e.g. its settings changed) is
        forgotten and made again."""
        loop = asyncio.get_running_loop()
        pid = os.getpid()
        stale: list[tuple[asyncio.AbstractEventLoop, int, T]] = []
        forgotten: list[T] = []
        with self._lock:
            for key, (other, owner, _value) in list(self._items.items()):
                if owner != pid:  # inherited across fork: the connections belong to the parent
                    forgotten.append(self._items.pop(key)[2])
                elif other is not loop and (other.is_closed() or not other.is_running()):
                    stale.append(self._items.pop(key))
            entry = self._items.get(id(loop))
            if entry is not None and entry[0] is not loop:  # id reused by a new loop
                stale.append(self._items.pop(id(loop)))
                entry = None
            if entry is not None and valid is not None and not valid(entry[2]):
                forgotten.append(self._items.pop(id(loop))[2])
                entry = None
            made = entry is None
            if entry is None:
                entry = self._items[id(loop)] = (loop, pid, self._make())
        for value in forgotten:
            self._forget(value)
        for other, _, value in stale:
            self._discard(value, other)
        if made:  # (again after a shutdown took the registered cleanups)
            from asyncjobs.hooks import on_shutdown

            on_shutdown(self._cleanup)
        return entry[2]

    def values(self) -> list[T]:
        with self._lock:
            return [value for _, _, value in self._items.values()]

    async def aclose_current(self) -> None:
        """Close the running loop's value, if any (the others stay)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._items.pop(id(loop), None)
        if entry is not None and entry[0] is loop and entry[1] == os.getpid():
            await self._close(entry[2])

    async def aclose_all(self) -> None:
        """Close every value: the running loop's here, others' on their own loop (``discard``)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for other, owner, value in items:
            if owner != os.getpid():
                self._forget(value)
            elif other is loop:
                await self._close(value)
            else:
                await asyncio.to_thread(self._discard, value, other)

    def clear(self) -> None:
        """Forget every value without closing it (tests that already closed them)."""
        with self._lock:
            self._items.clear()
