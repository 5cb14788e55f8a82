"""The sans-IO codec against real job hashes captured from stock RQ 2.12 (compat/fixtures)."""

from __future__ import annotations

import base64
import pickle
import zlib
from typing import Any

import pytest
import redis
from rq.job import Job

from asyncjobs.protocol import codec
from asyncjobs.protocol.codec import (
    Call,
    MalformedJobError,
    PayloadError,
    decode_call,
    encode_call,
    encode_exc_string,
    encode_return_value,
    parse_job_hash,
    result_entry,
)
from asyncjobs.protocol.serializers import (
    JSONSerializer,
    PickleSerializer,
    SerializerError,
    resolve_serializer,
)
from asyncjobs.protocol.timeutil import format_utc, parse_utc
from compat.fixture_data import fixture_names, load_fixture

MALFORMED = "malformed"
# restore() does no I/O; a Redis client only connects on its first command.
_OFFLINE = redis.Redis(host="127.0.0.1", port=1)


def _job_hashes(fixture: dict[str, Any]) -> dict[str, dict[str, bytes]]:
    out = {}
    for key, entry in fixture["keys"].items():
        if key.startswith("rq:job:") and key.count(":") == 2 and entry["type"] == "hash":
            out[key.split(":", 2)[2]] = entry["value"]
    return out


def _serializer(fixture: dict[str, Any]) -> Any:
    return resolve_serializer(fixture.get("serializer") or "pickle")


WELL_FORMED = [n for n in fixture_names() if n != MALFORMED]


@pytest.mark.parametrize("name", WELL_FORMED)
def test_every_captured_job_hash_parses_and_decodes(name: str) -> None:
    fixture = load_fixture(name)
    hashes = _job_hashes(fixture)
    assert hashes, f"fixture {name} has no job hash"
    for job_id, raw in hashes.items():
        record = parse_job_hash(job_id, raw)
        assert record.id == job_id
        assert record.data == raw["data"]
        # The payload decodes with the producer's serializer into a 4-tuple call.
        call = decode_call(record.data, _serializer(fixture))
        assert isinstance(call.func_name, str) and call.func_name


@pytest.mark.parametrize("name", WELL_FORMED)
def test_decoded_fields_agree_with_rq(name: str) -> None:
    """Our record says what rq's own Job.restore says about the same bytes."""
    fixture = load_fixture(name)
    for job_id, raw in _job_hashes(fixture).items():
        record = parse_job_hash(job_id, raw)
        job = Job(id=job_id, connection=_OFFLINE, serializer=fixture.get("serializer") or "pickle")
        job.restore({k.encode(): v for k, v in raw.items()})
        assert record.origin == (job.origin or "")
        assert record.timeout == job.timeout
        assert record.result_ttl == job.result_ttl
        assert record.failure_ttl == job.failure_ttl
        assert record.ttl == job.ttl
        assert record.retries_left == job.retries_left
        assert list(record.retry_intervals) == list(job.retry_intervals or [])
        assert record.repeats_left == job.repeats_left
        assert record.status == (job._status.value if raw.get("status") else None)
        assert record.created_at == job.created_at
        assert record.enqueued_at == job.enqueued_at
        assert list(record.dependency_ids) == list(job._dependency_ids)
        assert record.allow_dependency_failures == bool(job.allow_dependency_failures)
        assert record.number_of_retries == job.number_of_retries
        if job._success_callback_name:
            assert record.success_callback is not None
            assert record.success_callback.name == job._success_callback_name
            assert record.success_callback.timeout == job.success_callback_timeout
        call = decode_call(record.data, _serializer(fixture))
        assert call.func_name == job.func_name
        assert list(call.args) == list(job.args)
        assert call.kwargs == job.kwargs


def test_malformed_hashes_are_detected_exactly_where_rq_fetch_fails() -> None:
    fixture = load_fixture(MALFORMED)
    outcomes = fixture["fetch_outcomes"]
    for job_id, raw in _job_hashes(fixture).items():
        rq_fails = "fetch_error" in outcomes.get(job_id, {"fetch_error": "bad-date"})
        if rq_fails:
            with pytest.raises(MalformedJobError) as info:
                parse_job_hash(job_id, raw)
            # The message names the job and the bad field, and says what to do.
            assert job_id in str(info.value)
            assert "Fix the producer" in str(info.value) or "payload" in str(info.value)
            if "data" in raw:
                # The repairs make the hash readable by RQ again.
                repaired = dict(raw)
                repaired.update({k: v.encode() for k, v in info.value.repairs.items()})
                repaired["status"] = b"failed"
                job = Job(id=job_id, connection=_OFFLINE)
                job.restore({k.encode(): v for k, v in repaired.items()})
        else:
            record = parse_job_hash(job_id, raw)
            with pytest.raises(PayloadError):
                decode_call(record.data, PickleSerializer())


def test_a_timestamp_with_other_scripts_digits_fails_as_rq_fetch_does() -> None:
    """RQ's strptime takes only ASCII digits where the minutes begin: Job.restore raises on this hash,
    so the worker fails the job as malformed (naming the field) instead of running it."""
    from rq.job import Job

    raw = {"data": b"x", "origin": b"default", "enqueued_at": "2026-11-29T00:\u06632:10.143842Z".encode()}
    with pytest.raises(ValueError):
        Job(id="j", connection=_OFFLINE).restore({k.encode(): v for k, v in raw.items()})
    with pytest.raises(MalformedJobError) as info:
        parse_job_hash("j", raw)
    assert "enqueued_at" in str(info.value)


def test_wrong_serializer_gives_a_readable_hint() -> None:
    raw = load_fixture("queued_json")
    _job_id, h = next(iter(_job_hashes(raw).items()))
    with pytest.raises(PayloadError, match="--serializer json"):
        decode_call(h["data"], PickleSerializer())
    raw = load_fixture("queued_pickle")
    _job_id, h = next(iter(_job_hashes(raw).items()))
    with pytest.raises(PayloadError, match="--serializer pickle"):
        decode_call(h["data"], JSONSerializer())


def test_result_entry_matches_stock_stream_fields() -> None:
    fixture = load_fixture("finished_int")
    stream = fixture["keys"]["rq:results:" + fixture["job_id"]]["value"][0]["fields"]
    ours = result_entry(
        type_=1,
        worker_name=stream["worker_name"].decode(),
        return_value=encode_return_value(5, PickleSerializer()),
        execution_id=stream["execution_id"].decode(),
        started=stream["execution_started_at"].decode(),
        ended=stream["execution_ended_at"].decode(),
    )
    assert dict(zip(ours[0::2], [v.encode() for v in ours[1::2]], strict=True)) == stream
    assert list(stream) == ours[0::2]  # same field order


def test_failure_exc_string_round_trips_like_stock() -> None:
    fixture = load_fixture("failed_exception")
    fields = fixture["keys"]["rq:results:" + fixture["job_id"]]["value"][0]["fields"]
    text = codec.decode_exc_string(fields["exc_string"])
    assert text.startswith("Traceback (most recent call last):")
    assert encode_exc_string(text) == fields["exc_string"].decode()


def test_return_values_encode_as_rq_does() -> None:
    assert encode_return_value(5, PickleSerializer()) == "gAVLBS4="
    assert encode_return_value(7, JSONSerializer()) == "Nw=="
    assert encode_return_value(None, PickleSerializer()) is None
    unserializable = encode_return_value(lambda: 1, PickleSerializer())
    assert pickle.loads(base64.b64decode(unserializable or "")) == codec.UNSERIALIZABLE_RETURN_VALUE_PAYLOAD


def test_call_round_trip_and_uncompressed_fallback() -> None:
    call = Call("tasks.add", None, (1, 2), {"x": 3})
    data = encode_call(call, PickleSerializer())
    assert decode_call(data, PickleSerializer()) == call
    assert decode_call(zlib.decompress(data), PickleSerializer()) == call
    with pytest.raises(PayloadError, match="not a"):
        decode_call(zlib.compress(pickle.dumps({"a": 1})), PickleSerializer())


def test_intervals_follow_rq() -> None:
    assert codec.retry_interval((10, 20, 30), 3) == 10
    assert codec.retry_interval((10, 20, 30), 1) == 30
    assert codec.retry_interval((5,), 4) == 5
    assert codec.repeat_interval((10, 20, 30), 3) == 30
    assert codec.repeat_interval((10, 20, 30), 1) == 10
    assert codec.repeat_interval((10, 20), 9) == 20


def test_utc_timestamps_round_trip() -> None:
    dt = parse_utc("2026-11-29T00:52:10.143842Z")
    assert format_utc(dt) == "2026-11-29T00:52:10.143842Z"
    assert parse_utc("2026-11-29T00:52:10Z").second == 10


def test_utc_timestamps_parse_and_format_exactly_as_rq_does() -> None:
    """parse_utc takes a fast path for the canonical form; whatever it is given, it must accept what
    RQ's own ``utcparse`` accepts (with the same value) and reject what it rejects; format_utc must
    write what RQ's ``utcformat`` writes."""
    import random
    from datetime import UTC, datetime, timedelta, timezone

    from rq.utils import utcformat, utcparse

    rng = random.Random(23)
    canonical = "2026-11-29T00:52:10.143842Z"
    pool = "0123456789+-_ ,.:TZz\u0663\uff15x"

    def rq_parse(value: str) -> datetime | str:
        try:
            return utcparse(value)
        except ValueError:
            return "rejected"

    def ours(value: str) -> datetime | str:
        try:
            return parse_utc(value)
        except ValueError:
            return "rejected"

    samples = [canonical, "2026-11-29T00:52:10Z", "2026-11-29T24:00:00.000000Z", "2026-02-29T00:00:00.000000Z",
               "0001-01-01T00:00:00.000000Z", "2026-11-29T00:52:10,143842Z", "2026-11-29 00:52:10.143842Z",
               "2026-11-29T00:52:10.143842+00:00", "2026-11-29T00:52:10.1438Z", "2026-1-29T00:52:10.143842Z"]
    for _ in range(20000):
        chars = list(canonical)
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(pool)
        samples.append("".join(chars))
    for value in samples:
        assert ours(value) == rq_parse(value), value

    for _ in range(5000):
        dt = datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                      rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999999)]))
        assert format_utc(dt) == utcformat(dt)
        assert format_utc(dt.replace(tzinfo=UTC)) == utcformat(dt)
        if 2 <= dt.year <= 9998:
            shifted = dt.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=rng.randint(-12, 12))))
            assert format_utc(shifted) == utcformat(dt)


def test_serializer_resolution_errors_name_the_value() -> None:
    assert isinstance(resolve_serializer("json"), JSONSerializer)
    assert isinstance(resolve_serializer("rq.serializers.JSONSerializer"), JSONSerializer)
    with pytest.raises(SerializerError, match="'yaml'"):
        resolve_serializer("yaml")
    with pytest.raises(SerializerError, match="no_such_module"):
        resolve_serializer("no_such_module.Serializer")


def test_rq3_statuses_and_rate_limit_fields() -> None:
    """RQ 3's statuses are statuses; its rate-limit fields are read, and a non-integer
    ``rate_limit_concurrency`` (which RQ 3's ``Job.restore`` cannot read) is repaired to ``""``."""
    base = {"data": b"x", "origin": b"default"}
    for status in (b"rate_limited", b"ready_to_enqueue"):
        assert parse_job_hash("j", {**base, "status": status}).status == status.decode()
    record = parse_job_hash("j", {**base, "rate_limit_key": b"rk", "rate_limit_concurrency": b"3"})
    assert (record.rate_limit_key, record.rate_limit_concurrency, record.rate_limit) == ("rk", 3, "rk")
    assert parse_job_hash("j", {**base, "rate_limit_key": b"rk"}).rate_limit is None  # both fields, as RQ 3
    with pytest.raises(MalformedJobError) as info:
        parse_job_hash("j", {**base, "rate_limit_key": b"rk", "rate_limit_concurrency": b"lots"})
    assert info.value.repairs == {"rate_limit_concurrency": ""}
    if hasattr(Job, "has_rate_limit"):  # RQ 3 reads the repaired hash
        job = Job(id="j", connection=_OFFLINE)
        job.restore({b"data": b"x", b"rate_limit_key": b"rk", b"rate_limit_concurrency": b""})
        assert not job.has_rate_limit


def _nested_tuple(levels: int) -> bytes:
    """A protocol 4 pickle of ``()`` inside ``levels - 1`` one-tuples: one opcode byte per level."""
    return b"\x80\x04)" + b"\x85" * (levels - 1) + b"."


def test_a_pickle_short_enough_to_skip_the_bounds_walk_cannot_exceed_a_bound() -> None:
    """Plain-pickle payloads of at most MAX_DEPTH bytes are not walked: each level of nesting costs
    an opcode byte, so the deepest that fits passes the full walk (the restricted one always walks),
    and one level more is longer than that and refused."""
    from asyncjobs.protocol.picklescan import MAX_DEPTH, PickleBoundsError, scan

    deepest = max(k for k in range(1, MAX_DEPTH + 1) if len(_nested_tuple(k)) <= MAX_DEPTH)
    scan(_nested_tuple(deepest), safe_globals=frozenset())  # walked: within every bound
    too_deep = _nested_tuple(MAX_DEPTH + 1)
    assert len(too_deep) > MAX_DEPTH
    with pytest.raises(PickleBoundsError, match="nested deeper"):
        scan(too_deep)
    assert pickle.loads(_nested_tuple(3)) == (((),),)
