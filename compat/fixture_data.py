"""Load the captured RQ fixtures (``compat/fixtures/*.json``) and restore them into Redis.

``load_fixture("finished_int")`` returns the parsed JSON with every base64 value
decoded to ``bytes`` (hash fields, stream fields, list/set members, zset
members; zset scores stay the raw text Redis returned, e.g. ``"+inf"`` is
``"inf"``).  ``restore_fixture(conn, fixture)`` writes the keys back exactly
(streams keep their entry ids; positive TTLs are re-applied).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import redis

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES_DIR.glob("*.json"))


def _d(text: str) -> bytes:
    return base64.b64decode(text)


def _decode_key(entry: dict[str, Any]) -> dict[str, Any]:
    kind = entry["type"]
    value = entry["value"]
    if kind == "hash":
        decoded: Any = {f: _d(v) for f, v in value.items()}
    elif kind == "stream":
        decoded = [{"id": e["id"], "fields": {f: _d(v) for f, v in e["fields"].items()}} for e in value]
    elif kind == "zset":
        decoded = [(_d(m), s) for m, s in value]
    elif kind in ("list", "set"):
        decoded = [_d(v) for v in value]
    elif kind == "string":
        decoded = _d(value)
    else:  # pragma: no cover
        decoded = value
    return {"type": kind, "ttl": entry["ttl"], "value": decoded}


def load_fixture(name: str) -> dict[str, Any]:
    path = FIXTURES_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no fixture {name!r} in {FIXTURES_DIR}; known: {', '.join(fixture_names())}")
    data: dict[str, Any] = json.loads(path.read_text())
    data["keys"] = {k: _decode_key(v) for k, v in data["keys"].items()}
    return data


def job_hash(fixture: dict[str, Any], job_id: str | None = None) -> dict[str, bytes]:
    """The ``rq:job:<id>`` hash of the fixture's main job (or ``job_id``), fields as str, values bytes."""
    jid = job_id or fixture["job_id"]
    value: dict[str, bytes] = fixture["keys"][f"rq:job:{jid}"]["value"]
    return value


def restore_fixture(conn: redis.Redis, fixture: dict[str, Any]) -> None:
    pipe = conn.pipeline(transaction=True)
    for key, entry in fixture["keys"].items():
        kind, value = entry["type"], entry["value"]
        pipe.delete(key)
        if kind == "hash":
            pipe.hset(key, mapping=value)
        elif kind == "stream":
            for e in value:
                pipe.xadd(key, e["fields"], id=e["id"])
        elif kind == "zset":
            pipe.zadd(key, {m: float(s) for m, s in value})
        elif kind == "list":
            pipe.rpush(key, *value)
        elif kind == "set":
            pipe.sadd(key, *value)
        elif kind == "string":
            pipe.set(key, value)
        if entry["ttl"] > 0:
            pipe.expire(key, entry["ttl"])
    pipe.execute()


__all__ = ["FIXTURES_DIR", "fixture_names", "job_hash", "load_fixture", "restore_fixture"]
