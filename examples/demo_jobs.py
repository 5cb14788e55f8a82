"""Small jobs used by ``python -m examples.demo`` (``make demo``).

They are ordinary functions, enqueued by reference with stock RQ; the worker
imports this module by its dotted path, exactly as it would import yours.
"""

from __future__ import annotations

import asyncio

__all__ = ["CheckoutDeclined", "add", "checkout", "fetch_profile"]


class CheckoutDeclined(Exception):
    """Raised by :func:`checkout` to show how a failed job is reported."""


def add(a: int, b: int) -> int:
    """A plain synchronous job (runs in the worker's thread pool)."""
    return a + b


async def fetch_profile(user_id: int, delay: float = 0.5) -> dict[str, object]:
    """An ``async def`` job standing in for an I/O call (an HTTP request, a query).

    Many of these wait at the same time on one event loop, so 20 of them take
    about ``delay`` seconds in total, not 20 times that.
    """
    await asyncio.sleep(delay)
    return {"user_id": user_id, "name": f"user-{user_id}"}


async def checkout(order_id: str, amount_cents: int) -> str:
    """An async job that fails on purpose, to show a readable failure."""
    await asyncio.sleep(0)
    raise CheckoutDeclined(
        f"payment for order {order_id} ({amount_cents / 100:.2f} EUR) was declined by the card issuer "
        "(this job fails on purpose)"
    )
