"""RQ's three time formats (docs/rq-protocol.md §1.3)."""

from __future__ import annotations

import calendar
import re
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


_FAST_UTC = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{6}))?Z$")


def parse_utc(value: str) -> datetime:
    """Parse UTC-ts exactly as RQ does (with or without microseconds); raises ValueError.

    The canonical form takes a fast path; anything else goes through ``strptime``
    with RQ's own two formats, so what is accepted is exactly what RQ accepts.
    """
    m = _FAST_UTC.match(value)
    if m is not None:
        y, mo, d, h, mi, s, us = m.groups()
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(us or 0), tzinfo=UTC)
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
