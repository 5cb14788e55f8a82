"""Retrying a delivery: :class:`~asyncjobs.backoff.RetryPolicy` (full jitter, a server's Retry-After as a floor)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asyncjobs.backoff import RetryPolicy
from asyncjobs.delivery.errors import TransientDeliveryError
from asyncjobs.limits import Throttled

__all__ = ["RetriesExhaustedError", "RetryPolicy", "retry_async"]

log = logging.getLogger(__name__)
#: Longest queue pause a provider's Retry-After may ask for (seconds).
MAX_THROTTLE = 3600.0
T = TypeVar("T")


class RetriesExhaustedError(TransientDeliveryError):
    """A transient failure that persisted through every allowed attempt."""


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
    is raised carrying the last failure's message.  A provider asking to slow down
    (HTTP 429; SMTP 421/451 4.7.x) under the asyncjobs worker raises :class:`asyncjobs.Throttled`
    instead: the job goes back to its queue, which is paused for the Retry-After (at most
    :data:`MAX_THROTTLE`; without one, the backoff).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation(), attempt
        except TransientDeliveryError as exc:
            if exc.slow_down and _under_asyncjobs():
                # The queue's pause: the provider's Retry-After (at most an hour), else the backoff.
                wait = min(exc.retry_after, MAX_THROTTLE) if exc.retry_after is not None else policy.delay(
                    attempt, rand=rand)
                raise Throttled(wait, f"{describe}: the provider asked to slow down ({exc.code})") from exc
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


def _under_asyncjobs() -> bool:
    """True inside a job run by the asyncjobs worker (a stock ``rq worker`` does not know Throttled)."""
    from asyncjobs.hooks import in_asyncjobs_job

    return in_asyncjobs_job()
