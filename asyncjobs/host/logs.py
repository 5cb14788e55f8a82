"""Log output for the worker process: text (default) or one JSON object per line.

``--log-format json`` goes through the standard :mod:`logging` module: every
record, whoever logs it (asyncjobs, RQ, redis-py, your jobs), becomes one line
of JSON with ``time``, ``level``, ``logger``, ``message`` and ``pid``, plus
every ``extra=`` field of the record as its own key (``job_id``, ``queue``,
``func``, ``status``, ``duration_ms``, ``worker`` ...).  A traceback goes into
``exc_info`` as a string, so a line is always one line and always parses.

The text formats escape control characters (as ``repr`` does) in the message and in every
field a format string names: a job id, a description or a module name with a newline or an
ANSI escape (job data is whoever writes to Redis) cannot forge a log line or reach a terminal.
Tracebacks keep their line breaks; their other control characters are escaped.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from asyncjobs.redact import escape_controls

__all__ = ["TEXT_FORMAT", "JsonFormatter", "TextFormatter", "make_formatter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_OWN_KEYS = ("time", "level", "logger", "message", "pid")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra=`` fields become top-level keys.

    ``datefmt`` (``--date-format``) formats ``time`` with :func:`time.strftime`
    in UTC; without it ``time`` is ISO 8601 UTC with milliseconds.  An extra
    field named like one of the fixed keys is kept as ``extra_<name>``.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return time.strftime(datefmt, time.gmtime(record.created))
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            out[f"extra_{key}" if key in _OWN_KEYS else key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=_json_default, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` that escapes control characters in every text field it shows."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = {k: escape_controls(v) if isinstance(v, str) else v for k, v in record.__dict__.items()}
        return super().formatMessage(logging.makeLogRecord(fields))

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)


def make_formatter(log_format: str = "text", date_format: str | None = None) -> logging.Formatter:
    """``text``, ``json``, or a ``%``-style format string as ``rq worker --log-format`` takes."""
    if log_format == "json":
        return JsonFormatter(datefmt=date_format)
    if log_format == "text":
        return TextFormatter(TEXT_FORMAT, datefmt=date_format)
    if "%(" in log_format:
        try:
            formatter = TextFormatter(log_format, datefmt=date_format)
            formatter.format(logging.LogRecord("asyncjobs", logging.INFO, __file__, 0, "check", None, None))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"invalid --log-format {log_format!r}: {exc}") from None
        return formatter
    raise ValueError(
        f"invalid --log-format {log_format!r}: use text, json, or a logging format string such as "
        "'%(asctime)s %(message)s'"
    )


_HANDLER_NAME = "asyncjobs-stderr"


def setup_logging(level: str = "INFO", log_format: str = "text", date_format: str | None = None) -> None:
    """Log to stderr in the chosen format, unless logging is configured already (e.g. by
    ``DICT_CONFIG`` in a ``-c`` settings module), which is then left alone, as ``rq worker`` does."""
    formatter = make_formatter(log_format, date_format)  # validate before touching anything
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"invalid --logging-level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == _HANDLER_NAME]
    if root.handlers and not ours:
        logging.getLogger("asyncjobs").setLevel(numeric)
        return
    handler = ours[0] if ours else logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    if not ours:
        root.addHandler(handler)
    root.setLevel(numeric)
