"""The outcome contract between Python and finish.lua: one typed record, serialised in one place,
and a Lua header that documents exactly the fields that are sent (and that the script reads)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from importlib import resources

from asyncjobs.protocol import transitions
from asyncjobs.protocol.codec import JobRecord
from asyncjobs.protocol.transitions import WIRE_FIELDS, Execution, Kind

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def _finish_lua() -> str:
    return resources.files("asyncjobs.protocol").joinpath("lua", "finish.lua").read_text("utf-8")


def _documented_fields() -> set[str]:
    """The per-job fields listed in finish.lua's header (``--   a, b, c    what they are``)."""
    header = _finish_lua().split("-- Each job", 1)[1].split("-- Returns", 1)[0]
    fields: set[str] = set()
    for line in header.splitlines()[1:]:
        names = re.match(r"--\s+([a-z_]+(?:,\s*[a-z_]+)*)\s{2,}", line)
        if names:
            fields.update(n.strip() for n in names.group(1).split(","))
    return fields


def _every_kind() -> list[transitions.Transition]:
    ex = Execution("j1", "e1", "default", "w", NOW, NOW, NOW + timedelta(seconds=1))
    plain = JobRecord(id="j1", data=b"x", origin="default")
    rich = JobRecord(
        id="j1", data=b"x", origin="default", failure_ttl=60, retries_left=2, retry_intervals=(5,),
        repeats_left=1, repeat_intervals=(10,), number_of_retries=3, dependency_ids=("p",),
    )
    return [
        transitions.success(plain, ex, "cmV0", 500, working_time=1.5),
        transitions.success(rich, ex, None, 500),
        transitions.failure(rich, ex, "boom", repairs={"status": "started"}, working_time=0.5),
        transitions.failure(plain, ex, "boom").without_failure_record(),
        transitions.stopped(rich, ex),
        transitions.exception_retry(rich, ex, working_time=2.0),
        transitions.value_retry(rich, ex, max_retries=5, intervals=(1, 2), retry_b64="cg=="),
        transitions.value_retry(rich, ex, max_retries=3, intervals=(1,), retry_b64="cg=="),
        transitions.give_back(ex),
        dataclasses.replace(transitions.failure(plain, ex, "boom"), rate_limit_key="rk"),
    ]


def test_lua_header_documents_exactly_the_fields_sent() -> None:
    sent: set[str] = set()
    for t in _every_kind():
        sent |= set(t.to_wire())
    assert sent <= WIRE_FIELDS, f"to_wire() sends fields WIRE_FIELDS does not list: {sent - WIRE_FIELDS}"
    assert sent == WIRE_FIELDS, f"WIRE_FIELDS lists fields nothing sends: {WIRE_FIELDS - sent}"
    assert _documented_fields() == WIRE_FIELDS


def test_lua_reads_every_field_sent() -> None:
    lua = _finish_lua()
    unread = {f for f in WIRE_FIELDS if not re.search(rf"\bj\.{f}\b", lua)}
    assert unread == set(), f"finish.lua never reads: {unread}"


def test_every_kind_is_built_and_named_in_the_header() -> None:
    kinds = {t.kind for t in _every_kind()}
    assert kinds == set(Kind)
    header = _finish_lua().split("-- Returns", 1)[0]
    for kind in Kind:
        assert str(kind) in header


def test_counters_travel_with_the_outcome() -> None:
    by_kind: dict[tuple[Kind, bool], dict[str, object]] = {}
    for t in _every_kind():
        by_kind.setdefault((t.kind, t.registry), t.to_wire())  # the first of each kind
    assert by_kind[(Kind.SUCCESS, True)]["ok"] == 1 and by_kind[(Kind.SUCCESS, True)]["wt"] == "1.500000"
    assert by_kind[(Kind.FAILURE, True)]["failed"] == 1
    assert by_kind[(Kind.RETRY, True)]["failed"] == 1
    assert "ok" not in by_kind[(Kind.REQUEUE, True)] and "failed" not in by_kind[(Kind.REQUEUE, True)]


def _ex() -> Execution:
    return Execution("j1", "e1", "default", "w", NOW, NOW, NOW + timedelta(seconds=1))


def test_repeat_intervals_by_rq_major() -> None:
    """Repeat(times=3, interval=[10, 20]) after its first run: RQ 2.12 counts from the end of the list
    and keeps it; RQ 3 takes the head and stores the rest (docs/rq-protocol.md §13.8)."""
    job = JobRecord(id="j1", data=b"x", origin="default", repeats_left=2, repeat_intervals=(10, 20))
    two = transitions.success(job, _ex(), None, 500, rq_major=2).next
    three = transitions.success(job, _ex(), None, 500, rq_major=3).next
    assert two is not None and three is not None
    later = NOW + timedelta(seconds=1)
    assert two.score == str(int((later + timedelta(seconds=20)).timestamp()))
    assert dict(two.fields) == {"repeats_left": "1"}
    assert three.score == str(int((later + timedelta(seconds=10)).timestamp()))
    assert dict(three.fields) == {"repeats_left": "1", "repeat_intervals": json.dumps([20])}
    last = JobRecord(id="j1", data=b"x", origin="default", repeats_left=1, repeat_intervals=(20,))
    final = transitions.success(last, _ex(), None, 500, rq_major=3).next
    assert final is not None and dict(final.fields) == {"repeats_left": "0"}  # a one-element list stays


def test_returned_retry_at_front_by_rq_major() -> None:
    """A job returning Retry(enqueue_at_front=True): RQ 3 requeues it at the front and remembers it in
    enqueue_at_front_on_retry; RQ 2.12 ignores the flag."""
    job = JobRecord(id="j1", data=b"x", origin="default", number_of_retries=None)
    two = transitions.value_retry(job, _ex(), max_retries=2, intervals=(), retry_b64="cg==", at_front=True,
                                  rq_major=2).next
    three = transitions.value_retry(job, _ex(), max_retries=2, intervals=(), retry_b64="cg==", at_front=True,
                                    rq_major=3).next
    assert two is not None and not two.at_front and "enqueue_at_front_on_retry" not in two.fields
    assert three is not None and three.at_front and three.fields["enqueue_at_front_on_retry"] == "1"
