"""The outcome contract between Python and finish.lua: one typed record, serialised in one place,
and a Lua header that documents exactly the fields that are sent (and that the script reads)."""

from __future__ import annotations

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
