"""Sans-IO codec: RQ job hashes <-> immutable records, and result-stream entries.

No I/O here.  ``parse_job_hash`` mirrors ``rq.job.Job.restore`` field by field so
that whatever RQ's ``Job.fetch`` would reject is detected *before* the worker
touches the job; such a hash yields a :class:`MalformedJobError` carrying the
minimal repairs that make the hash readable by RQ again, so the job can be
recorded as failed with a readable reason instead of crashing the worker (a
stock worker quits on such a job).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rq.exceptions import DeserializationError

from asyncjobs.protocol.picklescan import PickleBoundsError
from asyncjobs.protocol.serializers import ForbiddenGlobalError, Serializer
from asyncjobs.protocol.timeutil import parse_utc

DEFAULT_TIMEOUT = 180
DEFAULT_RESULT_TTL = 500
DEFAULT_FAILURE_TTL = 31536000
DEFAULT_CALLBACK_TIMEOUT = 60
#: Largest ``data`` field a worker decodes, once decompressed (``--max-payload-size``).
DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024
UNSERIALIZABLE_RETURN_VALUE_PAYLOAD = "Unserializable return value"

#: Every status RQ writes; ``rate_limited`` and ``ready_to_enqueue`` are RQ 3's (docs/rq-protocol.md §13.8):
#: a job claimed from a queue never carries them, but a hash written by RQ 3 may.
JOB_STATUSES = frozenset(
    {"created", "queued", "started", "deferred", "scheduled", "finished", "failed", "stopped", "canceled",
     "rate_limited", "ready_to_enqueue"}
)


class ResultType:
    SUCCESSFUL = 1
    FAILED = 2
    STOPPED = 3
    RETRIED = 4
    MAX_RETRIES_EXCEEDED = 5


_DATE_FIELDS = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")
_INT_FIELDS = (
    "timeout", "result_ttl", "failure_ttl", "ttl", "number_of_retries", "retries_left", "repeats_left",
    "rate_limit_concurrency",  # RQ 3 (Job.restore: int() when set)
)
_TEXT_FIELDS = (
    "origin", "worker_name", "description", "group_id",
    "success_callback_name", "failure_callback_name", "stopped_callback_name",
    "rate_limit_key",  # RQ 3
)
_CALLBACK_TIMEOUTS = ("success_callback_timeout", "failure_callback_timeout", "stopped_callback_timeout")
_FLAG_FIELDS = ("enqueue_at_front", "allow_dependency_failures", "enqueue_at_front_on_retry")
_JSON_FIELDS = ("dependency_ids", "retry_intervals", "repeat_intervals")


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    value: bytes
    reason: str

    def describe(self) -> str:
        shown = self.value[:60]
        return f"{self.field}={shown!r}: {self.reason}"


class MalformedJobError(Exception):
    """The job hash cannot be read by RQ; ``repairs`` make it readable again."""

    def __init__(self, job_id: str, problems: list[FieldProblem], repairs: dict[str, str]) -> None:
        self.job_id = job_id
        self.problems = problems
        self.repairs = repairs
        details = "; ".join(p.describe() for p in problems)
        super().__init__(
            f"job {job_id} has a malformed hash ({details}); the producer wrote fields RQ cannot parse. "
            "Fix the producer and re-enqueue the job."
        )


class PayloadError(DeserializationError):
    """The ``data`` field cannot be turned into a call (RQ's ``DeserializationError``)."""

    reported_as = "rq.exceptions.DeserializationError"


class PayloadTooLargeError(PayloadError):
    """The ``data`` field is (or inflates to) more than the worker's ``--max-payload-size``."""


def format_size(n: int) -> str:
    """``67108864`` -> ``64 MiB`` (exact binary units when they fit, else bytes)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True, slots=True)
class Call:
    func_name: str
    instance: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallbackSpec:
    name: str
    timeout: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The fields of an RQ job hash that a worker needs, decoded."""

    id: str
    data: bytes
    origin: str = ""
    status: str | None = None
    description: str = ""
    created_at: datetime | None = None
    enqueued_at: datetime | None = None
    timeout: int | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    ttl: int | None = None
    retries_left: int | None = None
    retry_intervals: tuple[int, ...] = ()
    enqueue_at_front_on_retry: bool = False
    number_of_retries: int | None = None
    repeats_left: int | None = None
    repeat_intervals: tuple[int, ...] = ()
    success_callback: CallbackSpec | None = None
    failure_callback: CallbackSpec | None = None
    stopped_callback: CallbackSpec | None = None
    webhooks: tuple[Mapping[str, Any], ...] = ()
    dependency_ids: tuple[str, ...] = ()
    allow_dependency_failures: bool = False
    group_id: str | None = None
    raw_meta: bytes | None = None
    rate_limit_key: str | None = None  # RQ 3's RateLimit(key, concurrency)
    rate_limit_concurrency: int | None = None

    @property
    def rate_limit(self) -> str | None:
        """The key whose slot this job holds while queued or started (RQ 3's ``has_rate_limit``)."""
        return self.rate_limit_key if self.rate_limit_key and self.rate_limit_concurrency else None

    def effective_timeout(self) -> float | None:
        """Seconds the job may run, or None for no limit (RQ: ``timeout or 180``, -1 = none)."""
        t = self.timeout or DEFAULT_TIMEOUT
        return None if t < 0 else float(t)

    def effective_result_ttl(self, default: int) -> int:
        return default if self.result_ttl is None else self.result_ttl


def normalize_hash(raw: Mapping[str, bytes] | Mapping[bytes, bytes] | Mapping[Any, Any]) -> dict[str, bytes]:
    if isinstance(raw, _Normalized):
        return raw
    out = _Normalized()
    for k, v in raw.items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        out[key] = v if isinstance(v, bytes) else str(v).encode("utf-8")
    return out


def hash_from_latin1(flat: list[str]) -> dict[str, bytes]:
    """A flat ``HGETALL`` reply whose bytes came as one latin-1 character each (JSON from a script)."""
    out = _Normalized()
    for i in range(0, len(flat) - 1, 2):
        k = flat[i]
        if not k.isascii():
            k = k.encode("latin-1").decode("utf-8", "replace")
        out[k] = flat[i + 1].encode("latin-1")
    return out


class _Normalized(dict[str, bytes]):
    """A hash already decoded to ``str`` keys and ``bytes`` values (skips re-normalising)."""


def _as_text(v: bytes) -> str:
    return v.decode("utf-8")


def _as_date(v: bytes) -> datetime:
    return parse_utc(v.decode("utf-8"))


def _as_int_list(v: bytes) -> tuple[int, ...]:
    parsed = json.loads(v.decode("utf-8"))
    if not isinstance(parsed, list):
        raise ValueError("not a list")
    return tuple(int(x) for x in parsed)


def _as_str_list(v: bytes) -> tuple[str, ...]:
    parsed = json.loads(v.decode("utf-8"))
    if not isinstance(parsed, list):
        raise ValueError("not a list")
    return tuple(str(x) for x in parsed)


def _as_status(v: bytes) -> str:
    text = v.decode("utf-8")
    if text not in JOB_STATUSES:
        raise ValueError(text)
    return text


_DATE_REASON = "not a UTC timestamp like 2026-01-01T00:00:00.000000Z"
# field -> (parser, reason if it fails, repair value, checked even when empty)
_FIELDS: dict[str, tuple[Any, str, str, bool]] = {
    **{f: (_as_text, "not UTF-8 text", "", False) for f in _TEXT_FIELDS},
    **{f: (_as_date, _DATE_REASON, "", False) for f in _DATE_FIELDS},
    **{f: (int, "not an integer", "", False) for f in _INT_FIELDS},
    **{f: (int, "not an integer", str(DEFAULT_CALLBACK_TIMEOUT), True) for f in _CALLBACK_TIMEOUTS},
    "enqueue_at_front": (int, "not 0 or 1", "0", True),
    "allow_dependency_failures": (int, "not 0 or 1", "0", False),
    "enqueue_at_front_on_retry": (int, "not 0 or 1", "0", False),
    "retry_intervals": (_as_int_list, "not a JSON list", "[0]", False),
    "repeat_intervals": (_as_int_list, "not a JSON list", "[0]", False),
    "dependency_ids": (_as_str_list, "not a JSON list", "[]", False),
    "status": (_as_status, f"not one of {sorted(JOB_STATUSES)}", "failed", False),
}


def parse_job_hash(job_id: str, raw_hash: Mapping[str, bytes] | Mapping[bytes, bytes]) -> JobRecord:
    """Decode a job hash as ``Job.fetch`` would; raise MalformedJobError if RQ could not.

    One pass over the hash's own fields: each known field is parsed with the rule
    ``rq.job.Job.restore`` applies to it (empty strings mean "unset" except where
    RQ parses them anyway), so exactly what RQ would reject is reported.
    """
    raw = normalize_hash(raw_hash)
    if "data" not in raw:
        raise MalformedJobError(job_id, [FieldProblem("data", b"", "missing (the job has no payload)")], {})
    values: dict[str, Any] = {}
    problems: list[FieldProblem] | None = None
    repairs: dict[str, str] = {}
    for name, v in raw.items():
        rule = _FIELDS.get(name)
        if rule is None or not (v or rule[3]):
            continue
        try:
            values[name] = rule[0](v)
        except (ValueError, TypeError, UnicodeDecodeError):
            if problems is None:
                problems = []
            problems.append(FieldProblem(name, v, rule[1]))
            repairs[name] = rule[2]
    if problems:
        raise MalformedJobError(job_id, problems, repairs)

    get = values.get

    def callback(prefix: str) -> CallbackSpec | None:
        name = get(f"{prefix}_callback_name")
        if not name:
            return None
        t = get(f"{prefix}_callback_timeout")
        return CallbackSpec(name, t if t is not None else DEFAULT_CALLBACK_TIMEOUT)

    webhooks: tuple[Mapping[str, Any], ...] = ()
    if raw.get("webhooks"):
        try:
            loaded = json.loads(raw["webhooks"].decode("utf-8"))
            webhooks = tuple(w for w in loaded if isinstance(w, dict))
        except (ValueError, UnicodeDecodeError, TypeError):
            webhooks = ()  # RQ logs and ignores undecodable webhooks too

    dep_ids: tuple[str, ...] = get("dependency_ids", ())
    if not dep_ids and raw.get("dependency_id"):
        dep_ids = (raw["dependency_id"].decode("utf-8", "replace"),)

    return JobRecord(
        id=job_id,
        data=raw["data"],
        origin=get("origin", ""),
        status=get("status"),
        description=get("description", ""),
        created_at=get("created_at"),
        enqueued_at=get("enqueued_at"),
        timeout=get("timeout"),
        result_ttl=get("result_ttl"),
        failure_ttl=get("failure_ttl"),
        ttl=get("ttl"),
        retries_left=get("retries_left"),
        retry_intervals=get("retry_intervals", ()),
        enqueue_at_front_on_retry=bool(get("enqueue_at_front_on_retry", 0)),
        number_of_retries=get("number_of_retries"),
        repeats_left=get("repeats_left"),
        repeat_intervals=get("repeat_intervals", ()),
        success_callback=callback("success"),
        failure_callback=callback("failure"),
        stopped_callback=callback("stopped"),
        webhooks=webhooks,
        dependency_ids=dep_ids,
        allow_dependency_failures=bool(get("allow_dependency_failures", 0)),
        group_id=get("group_id") or None,
        raw_meta=raw.get("meta") or None,
        rate_limit_key=get("rate_limit_key") or None,
        rate_limit_concurrency=get("rate_limit_concurrency") or None,
    )


def inflate(data: bytes, max_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> bytes:
    """The serializer's bytes from a ``data`` field, as RQ reads them, but never more than ``max_size``.

    RQ does ``zlib.decompress(data)`` and falls back to the raw bytes when that
    fails; here the output is capped while inflating, so a small field that
    would inflate to gigabytes (a zip bomb) costs at most ``max_size`` bytes.
    """
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(data, max_size + 1)
    except zlib.error:
        payload = None
    if payload is not None:
        if len(payload) > max_size or inflater.unconsumed_tail:
            raise _too_large(max_size, f"inflates to more than {format_size(max_size)}")
        if inflater.eof:
            return payload
        # a truncated stream: zlib.decompress would raise, so RQ reads the raw bytes
    if len(data) > max_size:
        raise _too_large(max_size, f"is {len(data)} bytes, more than {format_size(max_size)}")
    return data


def _too_large(max_size: int, what: str, field: str = "data", where: str = "the job's arguments") -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"job {field} {what} (the worker's --max-payload-size is {format_size(max_size)}); it was not decoded "
        "and the job did not run. Pass large data by reference (a URL, a file path or a database id) "
        f"instead of in {where}, or start the worker with a larger --max-payload-size"
    )


def check_meta_size(raw_meta: bytes | None, max_size: int) -> None:
    """``meta`` is job data too (hooks and callbacks decode it): raise PayloadTooLargeError over the cap."""
    if raw_meta is not None and len(raw_meta) > max_size:
        raise _too_large(max_size, f"is {len(raw_meta)} bytes, more than {format_size(max_size)}", "meta",
                         "the job's meta")


def decode_call(data: bytes, serializer: Serializer, max_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> Call:
    """Turn the ``data`` field into a call; raise PayloadError with a readable reason."""
    return call_from_payload(inflate(data, max_size), serializer)


def call_from_payload(payload: bytes, serializer: Serializer) -> Call:
    """Deserialize inflated ``data`` bytes into a call; raise PayloadError with a readable reason."""
    try:
        loaded = serializer.loads(payload)
    except (ForbiddenGlobalError, PickleBoundsError) as exc:
        raise PayloadError(f"{exc}") from exc
    except Exception as exc:
        kind = type(serializer).__name__
        hint = ""
        if payload[:1] == b"\x80" and getattr(serializer, "name", None) != "pickle":
            hint = " (the payload looks like pickle: start the worker with --serializer pickle)"
        elif payload[:1] == b"[" and getattr(serializer, "name", None) != "json":
            hint = " (the payload looks like JSON: start the worker with --serializer json)"
        raise PayloadError(
            f"cannot deserialize job data with {kind}: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    if not isinstance(loaded, list | tuple) or len(loaded) != 4:
        raise PayloadError(
            f"job data is not a (func_name, instance, args, kwargs) tuple but {type(loaded).__name__}"
        )
    func_name, instance, args, kwargs = loaded
    if not isinstance(func_name, str) or not func_name:
        raise PayloadError(f"job data names no function (func_name={func_name!r})")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise PayloadError("job data has args that are not a list or kwargs that are not a dict")
    return Call(func_name, instance, tuple(args), dict(kwargs))


def encode_call(call: Call, serializer: Serializer) -> bytes:
    return zlib.compress(serializer.dumps((call.func_name, call.instance, call.args, call.kwargs)))


def encode_return_value(value: Any, serializer: Serializer) -> str | None:
    """``return_value`` stream field: base64 of the serializer's bytes; None for None."""
    if value is None:
        return None
    try:
        raw = serializer.dumps(value)
    except Exception:
        raw = serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return base64.b64encode(raw).decode("ascii")


def encode_exc_string(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode("utf-8"))).decode("ascii")


def decode_exc_string(value: bytes | str) -> str:
    raw = base64.b64decode(value)
    return zlib.decompress(raw).decode("utf-8")


def result_entry(
    *,
    type_: int,
    worker_name: str,
    return_value: str | None = None,
    exc_string: str | None = None,
    execution_id: str | None = None,
    started: str | None = None,
    ended: str | None = None,
) -> list[str]:
    """Flat field/value list for ``XADD rq:results:<jid>`` in RQ's field order."""
    fields = ["type", str(type_), "worker_name", worker_name]
    if exc_string is not None:
        fields += ["exc_string", encode_exc_string(exc_string)]
    if return_value is not None:
        fields += ["return_value", return_value]
    if execution_id:
        fields += ["execution_id", execution_id]
    if started:
        fields += ["execution_started_at", started]
    if ended:
        fields += ["execution_ended_at", ended]
    return fields


def timeout_message(seconds: float | int) -> str:
    return f"Task exceeded maximum timeout value ({int(seconds)} seconds)"


def retry_interval(intervals: tuple[int, ...], retries_left: int) -> int:
    """RQ's Retry.get_interval: chosen before retries_left is decremented."""
    if not intervals:
        return 0
    index = max(len(intervals) - retries_left, 0)
    return intervals[min(index, len(intervals) - 1)]


def repeat_interval(intervals: tuple[int, ...], repeats_left: int) -> int:
    """RQ 2.12's Repeat: uses the list from its end, clamped (docs/rq-protocol.md §8.8)."""
    if not intervals:
        return 0
    index = repeats_left - 1
    return intervals[max(0, min(index, len(intervals) - 1))]


def repeat_step(
    intervals: tuple[int, ...], repeats_left: int, rq_major: int
) -> tuple[int, tuple[int, ...] | None]:
    """The next repeat's interval, and the ``repeat_intervals`` to store (None: unchanged).

    RQ 2.12 counts from the end of the list and never changes it; RQ 3 takes the head and
    stores the rest while more than one is left (``rq/repeat.py``, docs/rq-protocol.md §13.8).
    """
    if rq_major < 3:
        return repeat_interval(intervals, repeats_left), None
    if not intervals:
        return 0, None
    return intervals[0], (intervals[1:] if len(intervals) > 1 else None)
