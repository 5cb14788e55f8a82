"""RQ's three time formats (rq-protocol.md, notation table)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

UTC_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
UTC_FORMAT_NO_US = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_utc(dt: datetime) -> str:
    """UTC-ts: always 6 microsecond digits and a literal ``Z``."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime(UTC_FORMAT)


def parse_utc(value: str) -> datetime:
    """Parse UTC-ts exactly as RQ does (with or without microseconds); raises ValueError."""
    try:
        return datetime.strptime(value, UTC_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.strptime(value, UTC_FORMAT_NO_US).replace(tzinfo=UTC)


def epoch_int(dt: datetime) -> int:
    """epoch-int: integer Unix seconds (``calendar.timegm(utctimetuple())``)."""
    return calendar.timegm(dt.utctimetuple())


def epoch_float(dt: datetime) -> str:
    """epoch-float: ``str(datetime.timestamp())`` as redis-py would send it."""
    return repr(dt.timestamp())
