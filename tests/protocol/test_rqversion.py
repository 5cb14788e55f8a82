"""The installed RQ, its key prefix and the hash-tag rule (docs/rq-protocol.md §13.1, §13.2, §14.1)."""

from __future__ import annotations

import pytest
import rq
from redis.crc import key_slot

from asyncjobs.cluster import parse_cluster_slots
from asyncjobs.protocol import rqversion
from asyncjobs.protocol.keys import DEFAULT, Keys


def test_the_installed_rq() -> None:
    assert rq.__version__ == rqversion.RQ_VERSION
    assert rqversion.RQ_MAJOR in rqversion.SUPPORTED_MAJORS
    assert DEFAULT.prefix == rqversion.installed_prefix() == "rq"  # the tests run without RQ_KEY_PREFIX


def test_prefix_rule_is_rqs() -> None:
    for ok in ("rq", "myapp", "{rq}", "a.b:c-d_e"):
        assert rqversion.check_prefix(ok) == ok
    with pytest.raises(ValueError, match=r"invalid key prefix 'my app'.*letters, digits"):
        Keys("my app")


@pytest.mark.parametrize(
    ("prefix", "tag"), [("{rq}", "rq"), ("app{rq-a}x", "rq-a"), ("rq", None), ("{}", None), ("{rq", None)]
)
def test_hash_tag(prefix: str, tag: str | None) -> None:
    assert rqversion.hash_tag(prefix) == tag
    if tag is not None:  # every key under the prefix hashes to the tag's slot
        assert key_slot(f"{prefix}:queue:default".encode()) == key_slot(tag.encode())


def test_a_prefix_under_rq2_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rqversion, "RQ_MAJOR", 2)
    problem = rqversion.prefix_problem({"RQ_KEY_PREFIX": "{rq}"})
    assert problem is not None and "'{rq}'" in problem and "install RQ 3" in problem
    assert rqversion.prefix_problem({"RQ_KEY_PREFIX": "rq"}) is None
    assert rqversion.prefix_problem({}) is None
    monkeypatch.setattr(rqversion, "RQ_MAJOR", 3)
    assert rqversion.prefix_problem({"RQ_KEY_PREFIX": "{rq}"}) is None


def test_own_keys_keep_their_old_names_under_the_default_prefix() -> None:
    assert Keys("rq").own("ratelimit:sms") == "asyncjobs:ratelimit:sms"
    assert Keys("{rq}").own("ratelimit:sms") == "{rq}:asyncjobs:ratelimit:sms"


def test_cluster_slots_reply() -> None:
    reply = [
        [0, 5460, [b"127.0.0.1", 7000, b"id0"], [b"127.0.0.1", 7003, b"id3"]],
        [5461, 10922, [b"127.0.0.1", 7001, b"id1"]],
        [10923, 16383, [b"", 7002, b"id2"]],  # a node that does not know its address yet
    ]
    assert parse_cluster_slots(reply, 141) == ((("127.0.0.1", 7000)), [("127.0.0.1", 7000), ("127.0.0.1", 7003),
                                                                       ("127.0.0.1", 7001)])
    assert parse_cluster_slots(reply, 6000)[0] == ("127.0.0.1", 7001)
    assert parse_cluster_slots(reply, 12000)[0] is None
