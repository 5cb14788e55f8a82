"""RQ's three time formats (docs/rq-protocol.md §1.3)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

UTC_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
UTC_FORMAT_NO_US = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_utc(dt: datetime) -> str:
    """UTC-ts: always 6 microsecond digits and a literal ``Z``, as RQ's ``utcformat`` writes it.

    ``isoformat`` (about twice as fast as ``strftime``, and called several times per job) writes the
    same characters for 4-digit years; earlier years go through RQ's own ``strftime``, which does not
    pad them."""
    if dt.tzinfo is not None and dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    if dt.year >= 1000:
        return dt.isoformat(timespec="microseconds")[:26] + "Z"
    return dt.strftime(UTC_FORMAT)


def parse_utc(value: str) -> datetime:
    """Parse UTC-ts exactly as RQ does (with or without microseconds); raises ValueError.

    The canonical form (27 ASCII characters, separators in place) takes a fast path,
    ``datetime.fromisoformat``, which reads ASCII digits only; anything else, and anything it
    refuses, goes through ``strptime`` with RQ's own two formats, so what is accepted is exactly
    what RQ's ``utcparse`` accepts.  (A regular expression's ``\\d`` would also take other scripts'
    digits where ``strptime`` does not: a job RQ itself cannot load.)
    """
    if (
        len(value) == 27 and value[26] == "Z" and value[19] == "." and value[10] == "T" and value[4] == "-"
        and value[7] == "-" and value[13] == ":" and value[16] == ":" and value.isascii()
    ):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
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
