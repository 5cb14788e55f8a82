"""One backoff and one retry policy for the whole package (no I/O, no dependencies).

Attempt ``n`` (1-based) waits ``backoff_base * 2**(n-1)`` seconds, capped at
``backoff_max``, with jitter; a server's ``retry_after`` is a floor.  Used by the
worker (Redis outages, the command channel, restarting ``--processes`` children),
the delivery layer (SMTP/SMS retries) and the outbox (row retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Jitter", "RetryPolicy", "wait_or"]

log = logging.getLogger("asyncjobs.worker")  # only Backoff logs, for the worker's Redis waits

#: "full": uniform in [0, d]; "half": uniform in [d/2, d]; "none": exactly d.
Jitter = Literal["full", "half", "none"]


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them."""

    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base < 0:
            raise ValueError(f"backoff_base must be >= 0 seconds, got {self.backoff_base}")
        if self.backoff_max < self.backoff_base:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be at least backoff_base ({self.backoff_base})"
            )

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2.0 ** max(attempt - 1, 0)))
        if self.jitter == "full":
            wait = rand() * ceiling
        elif self.jitter == "half":
            wait = ceiling * (0.5 + rand() / 2)
        else:
            wait = ceiling
        if retry_after is not None:
            wait = max(wait, retry_after)
        return max(0.0, min(wait, self.backoff_max))


#: Redis outages: 0.1-0.2 s doubling to 5-10 s.
REDIS_OUTAGE = RetryPolicy(max_attempts=1, backoff_base=0.2, backoff_max=10.0, jitter="half")


class Backoff:
    """A loop's backoff state: each :meth:`wait` waits longer, :meth:`reset` after a success."""

    def __init__(self, policy: RetryPolicy = REDIS_OUTAGE, *, on_wait: Callable[[], None] | None = None) -> None:
        self.policy = policy
        self.failures = 0
        #: called once per :meth:`wait` (the engine counts ``asyncjobs_redis_errors_total`` with it)
        self.on_wait = on_wait

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return self.policy.delay(self.failures)

    async def wait(self, what: str, stop: asyncio.Event | None) -> None:
        """Log ``what`` failed and wait (less if ``stop`` is set meanwhile)."""
        delay = self.next_delay()
        if self.on_wait is not None:
            self.on_wait()
        log.warning("Redis unavailable (%s); retrying in %.1fs", what, delay)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            await wait_or(stop, delay)


async def wait_or(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds pass, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
