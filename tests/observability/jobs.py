"""Jobs for the Sentry/OpenTelemetry tests."""

from __future__ import annotations

import asyncio


def ok(x: int) -> int:
    return x


def boom(text: str) -> None:
    raise ValueError(text)


async def aboom(text: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(text)


def traced_child() -> str:
    """A sync job (on a pool thread) that makes a span of its own."""
    from opentelemetry import trace

    with trace.get_tracer("job-code").start_as_current_span("child work"):
        return "traced"
