"""Retrying a delivery: :class:`~asyncjobs.backoff.RetryPolicy` (full jitter, a server's Retry-After as a floor)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asyncjobs.backoff import RetryPolicy
from asyncjobs.delivery.errors import TransientDeliveryError

__all__ = ["RetriesExhaustedError", "RetryPolicy", "retry_async"]

log = logging.getLogger(__name__)
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
