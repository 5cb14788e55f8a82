"""Exponential backoff with full jitter, honouring a server's Retry-After, capped."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from asyncjobs.delivery.errors import TransientDeliveryError

__all__ = ["RetriesExhaustedError", "RetryPolicy", "retry_async"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetriesExhaustedError(TransientDeliveryError):
    """A transient failure that persisted through every allowed attempt."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]; a server's
        ``retry_after`` is a floor, and everything is capped at ``backoff_max``.
        """
        ceiling = min(self.backoff_max, self.backoff_base * (2.0 ** (attempt - 1)))
        wait = rand() * ceiling
        if retry_after is not None:
            wait = max(wait, retry_after)
        return max(0.0, min(wait, self.backoff_max))


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    describe: str = "delivery",
) -> tuple[T, int]:
    """Run ``operation`` until it succeeds, retrying :class:`TransientDeliveryError`.

    Returns ``(result, attempts)``.  Permanent errors propagate at once; after
    ``policy.max_attempts`` transient failures a :class:`RetriesExhaustedError`
    is raised carrying the last failure's message.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation(), attempt
        except TransientDeliveryError as exc:
            if attempt >= policy.max_attempts:
                last = str(exc).replace(", will be retried", "").replace(" will be retried", "")
                raise RetriesExhaustedError(
                    f"{describe} failed after {attempt} attempt(s), giving up: {last}. The failure looked "
                    "temporary; check the provider, then re-enqueue the job (or raise DELIVERY_MAX_ATTEMPTS)",
                    retry_after=exc.retry_after,
                    code=exc.code,
                ) from exc
            wait = policy.delay(attempt, exc.retry_after, rand=rand)
            log.warning(
                "%s attempt %d/%d failed (%s); retrying in %.2fs",
                describe,
                attempt,
                policy.max_attempts,
                exc,
                wait,
            )
            await sleep(wait)
