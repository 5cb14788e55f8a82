"""Warm and cold shutdown: the stop state, the signal handlers, and waiting out the grace period.

Warm (first SIGTERM/SIGINT, ``send_shutdown_command``): stop fetching, let the
jobs in flight finish.  Cold (a second signal, or the grace period
``--shutdown-timeout`` running out): cancel what still runs and put those jobs
back on their queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from asyncjobs.worker.admission import Slots

if TYPE_CHECKING:
    from asyncjobs.worker.job import JobRun

__all__ = ["COLD_GRACE", "Shutdown"]

log = logging.getLogger("asyncjobs.worker")

#: After a cold stop, how long cancelled jobs get to end before the worker leaves them behind.
COLD_GRACE = 30.0


class Shutdown:
    def __init__(
        self,
        slots: Slots,
        grace: float,
        give_back: Callable[[JobRun], None],
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.stopping = asyncio.Event()
        self._on_stop = on_stop  # told once, at the first stop request (e.g. /readyz starts failing)
        self.cold = asyncio.Event()
        self._slots = slots
        self._grace = grace
        self._give_back = give_back  # cancels one job's code so that it is given back

    def request_stop(self) -> None:
        """Warm shutdown: stop fetching, let in-flight jobs finish (up to the grace period)."""
        if not self.stopping.is_set():
            log.info("warm shutdown requested: finishing %d job(s) in flight", len(self._slots))
            self._on_stop()
            self.stopping.set()
            self._slots.freed.set()

    def request_cold_stop(self) -> None:
        """Cold shutdown: cancel what is left and put those jobs back on their queues."""
        self.request_stop()
        if not self.cold.is_set():
            log.warning("cold shutdown: putting %d unfinished job(s) back on their queues", len(self._slots))
            self.cold.set()
            for item in self._slots:
                self._give_back(item)

    def install_signal_handlers(self, *, process_wide: bool = False) -> None:
        """First SIGTERM/SIGINT: warm shutdown; second: cold shutdown.

        ``process_wide`` (a process that exits once the worker stops: the console script, a
        ``--processes`` child): Python-level handlers instead of the loop's.  Closing the loop puts the
        signals it handled back to their default action (death by signal), and a second signal sent then,
        delivered to any of the process's threads, killed a worker that had already stopped (-15); a
        Python-level handler stays in place until the runner sets the signals ignored."""
        loop = asyncio.get_running_loop()

        def handler(signum: int) -> None:
            if self.stopping.is_set():
                self.request_cold_stop()
            else:
                log.info("received %s", signal.Signals(signum).name)
                self.request_stop()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the worker has stopped
                loop.call_soon_threadsafe(handler, signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            if process_wide:
                signal.signal(sig, on_signal)
            else:
                loop.add_signal_handler(sig, handler, sig)

    async def wait_for_jobs(self) -> None:
        """Until no job executes: the grace period, then a cold stop, then ``COLD_GRACE`` for the
        cancelled jobs to end (a job that ignores cancellation is left to RQ's maintenance)."""
        deadline = time.monotonic() + self._grace
        while True:
            tasks = [i.task for i in self._slots.executing() if i.task is not None]
            if not tasks:
                return
            if not self.stopping.is_set():
                deadline = time.monotonic() + self._grace
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if self.cold.is_set():
                    log.error(
                        "%d job(s) still running after cold shutdown (they ignore cancellation); they stay "
                        "in StartedJobRegistry for RQ's abandoned-job maintenance", len(tasks),
                    )
                    return
                self.request_cold_stop()
                deadline = time.monotonic() + COLD_GRACE
                continue
            cold = asyncio.create_task(self.cold.wait())
            await asyncio.wait({*tasks, cold}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            cold.cancel()
