"""Issue 17: ``RQ_KEY_PREFIX`` everywhere (docs/rq-protocol.md §13.2).

Producers and readers are stock RQ 3 processes with the prefix set (``compat.prefixed``); the worker,
stock or asyncjobs, runs with the same environment.  Every key the scenario leaves is under the prefix,
and RQ's own API, under the prefix, reads the outcomes.  With RQ 2.12 installed asyncjobs refuses a
prefix other than ``rq`` (RQ 2.12 ignores the variable).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from compat import prefixed
from compat.support import RQ_MAJOR, Launcher, WorkerKind
from tests.testsupport.workers import run_asyncjobs_worker, wait_for

PREFIX = "myapp"
ENV = {"RQ_KEY_PREFIX": PREFIX}


def _report(url: str, ids: dict[str, str]) -> dict[str, Any]:
    got = prefixed.run(PREFIX, "report", url, *ids.values())
    return {name: got[jid] for name, jid in ids.items()}


@pytest.mark.skipif(RQ_MAJOR < 3, reason="RQ_KEY_PREFIX is RQ 3's (RQ 2.12 is installed)")
def test_every_key_under_the_prefix(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    ids = prefixed.run(PREFIX, "enqueue", url, "mixed", url)
    proc = launcher.start(kind, ["default"], "--with-scheduler", concurrency=4, env=ENV)

    def done() -> dict[str, Any] | None:
        rep = _report(url, ids)
        return rep if all(r["status"] in ("finished", "failed") for r in rep.values()) else None

    rep = wait_for(done, 60, interval=0.3, message=lambda: f"every job ended: {_report(url, ids)}\n{proc.output()}")
    proc.stop()
    assert proc.wait(60) == 0, proc.output()

    assert rep["ok"]["result"] == 5 and rep["child"]["result"] == 10 and rep["later"]["result"] == 14
    assert rep["flaky"]["status"] == "finished" and rep["bad"]["status"] == "failed"
    assert [rep[f"limited{i}"]["result"] for i in range(3)] == [0, 2, 4]
    assert prefixed.run(PREFIX, "limiter", url, "rk") == {"allowed": [], "waiting": []}
    keys = sorted(k.decode() for k in sync_redis.scan_iter(count=1000))
    outside = [k for k in keys if not k.startswith(f"{PREFIX}:") and k != "flaky"]  # "flaky": the job's own
    assert outside == [], f"keys outside the prefix: {outside}"
    assert any(k.startswith(f"{PREFIX}:results:") for k in keys)


@pytest.mark.skipif(RQ_MAJOR < 3, reason="RQ_KEY_PREFIX is RQ 3's (RQ 2.12 is installed)")
def test_commands_on_the_prefixed_channel(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    ids = prefixed.run(PREFIX, "enqueue", url, "hold", url, "p1")
    proc = launcher.start(kind, ["default"], concurrency=2, env=ENV, stock_class="rq.worker.Worker")
    wait_for(lambda: sync_redis.lrange("held:started", 0, -1) == [b"p1"], 30, message=proc.output)
    prefixed.run(PREFIX, "stop", url, ids["held"])
    wait_for(lambda: _report(url, ids)["held"]["status"] == "stopped", 30,
             message=lambda: f"stopped via {PREFIX}:pubsub:<w>\n{proc.output()}")
    proc.stop()
    assert proc.wait(60) == 0, proc.output()


@pytest.mark.skipif(RQ_MAJOR >= 3, reason="RQ 3 honours RQ_KEY_PREFIX")
def test_a_prefix_is_refused_under_rq2(redis_url: str) -> None:
    proc = run_asyncjobs_worker(redis_url, ["default"], "--burst", env=ENV)
    try:
        assert proc.wait(60) == 2, proc.output()
        assert "RQ_KEY_PREFIX='myapp' is set, but the installed RQ 2.12" in proc.output()
    finally:
        proc.close()
