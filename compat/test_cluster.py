"""Issue 17: a real Redis Cluster (docs/rq-protocol.md §14), three masters with a replica each.

``RQ_KEY_PREFIX={rq}`` puts every key in one slot.  Stock RQ 3 producers and a stock RQ 3 worker use a
plain connection to the node that owns it (the only way RQ 3 runs on a cluster); asyncjobs is given any
node (``--cluster``) and finds the owner itself, and follows it after a failover of that master (its
replica promoted with ``CLUSTER FAILOVER``: nothing acknowledged is lost).  One asyncjobs worker also
serves two prefixes whose slots live on different masters.  The cluster is started once for this module.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from compat import prefixed
from compat.support import RQ_MAJOR, Launcher, WorkerKind
from tests.testsupport.redis_cluster import RedisCluster
from tests.testsupport.workers import wait_for

pytestmark = pytest.mark.skipif(RQ_MAJOR < 3, reason="RQ runs on a Redis Cluster from RQ 3 (RQ_KEY_PREFIX)")

PREFIX = "{rq}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    c = RedisCluster(masters=3, replicas=1)
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def clean(cluster: RedisCluster) -> RedisCluster:
    for port in cluster.running_ports():
        with contextlib.suppress(redis.ReadOnlyError):  # a replica: its master's flush reaches it
            cluster.client(port).flushall()
    return cluster


def _statuses(url: str, prefix: str, ids: dict[str, str]) -> dict[str, Any]:
    got = prefixed.run(prefix, "report", url, *ids.values())
    return {name: got[jid]["status"] for name, jid in ids.items()}


def _wait_ended(owner_url: Any, prefix: str, ids: dict[str, str], proc: Any, timeout: float = 60.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        got = _statuses(owner_url(), prefix, ids)
        return got if all(s in ("finished", "failed") for s in got.values()) else None

    return wait_for(ended, timeout, interval=0.3,
                    message=lambda: f"every job ended: {_statuses(owner_url(), prefix, ids)}\n{proc.output()}")


def _records(cluster: RedisCluster, key: str) -> list[str]:
    conn = redis.RedisCluster.from_url(cluster.url())
    try:
        return [v.decode() for v in conn.lrange(key, 0, -1)]
    finally:
        conn.close()


def test_stock_and_asyncjobs_on_a_cluster_and_asyncjobs_follows_a_failover(
    clean: RedisCluster, stock_kind: WorkerKind, asyncjobs_kind: WorkerKind, launcher: Launcher
) -> None:
    cluster = clean
    env = {"RQ_KEY_PREFIX": PREFIX}
    owner = cluster.owner_of(PREFIX)
    seed = next(p for p in cluster.ports if p != owner)  # asyncjobs is told about another node only
    curl = cluster.url()

    def owner_url() -> str:
        return cluster.url(cluster.owner_of(PREFIX))

    # A stock RQ 3 producer, a stock RQ 3 worker (alone on `stockq`) and asyncjobs, side by side.
    mixed = prefixed.run(PREFIX, "enqueue", owner_url(), "cluster", curl)
    stock_only = prefixed.run(PREFIX, "enqueue", owner_url(), "many", curl, "{obs}:stock", "3", "0", "stockq", "s")
    stock = launcher.start(stock_kind, ["stockq", "default"], env=env, url=owner_url())
    aj = launcher.start(asyncjobs_kind, ["default"], "--cluster", concurrency=4, env=env, url=cluster.url(seed))
    got = _wait_ended(owner_url, PREFIX, {**mixed, **stock_only}, aj)
    assert got["bad"] == "failed" and all(s == "finished" for k, s in got.items() if k != "bad"), got
    assert _records(cluster, "{obs}:deps") == ["parent", "child"]
    assert sorted(_records(cluster, "{obs}:rl")) == ["l0", "l1", "l2"]
    assert sorted(_records(cluster, "{obs}:stock")) == ["s0", "s1", "s2"]  # run by the stock worker
    assert prefixed.run(PREFIX, "limiter", owner_url(), "rk") == {"allowed": [], "waiting": []}
    stock.stop()  # a stock worker cannot follow the slot to another node (it would stop at the failover)
    assert stock.wait(60) == 0, stock.output()

    # A failover while asyncjobs has jobs in flight and queued: every job runs, once.
    before = prefixed.run(PREFIX, "enqueue", owner_url(), "many", curl, "{obs}:fo", "24", "0.1", "default", "b")
    wait_for(lambda: len(_records(cluster, "{obs}:fo")) >= 4, 30, message=aj.output)
    old, new = cluster.failover(PREFIX)
    assert (old, new) != (new, old) and cluster.owner_of(PREFIX) == new
    after = prefixed.run(PREFIX, "enqueue", owner_url(), "many", curl, "{obs}:fo", "12", "0", "default", "a")
    _wait_ended(owner_url, PREFIX, {**before, **after}, aj, timeout=90)
    assert sorted(_records(cluster, "{obs}:fo")) == sorted([f"b{i}" for i in range(24)] + [f"a{i}" for i in range(12)])
    aj.stop()
    assert aj.wait(60) == 0, aj.output()
    assert "slot" in aj.output()  # it noticed the move (logged as a brief outage, then carried on)


def _tags_on_two_masters(cluster: RedisCluster) -> tuple[str, str]:
    """Two hash-tag prefixes whose slots belong to different masters."""
    first = "{rq-a}"
    for c in "bcdefghijklmnopqrstuvwxyz":
        other = "{rq-" + c + "}"
        if key_slot(other.encode()) != key_slot(first.encode()) and cluster.owner_of(other) != cluster.owner_of(first):
            return first, other
    raise AssertionError("no two tags on different masters")


def test_one_worker_serves_two_prefixes_on_two_masters(
    clean: RedisCluster, asyncjobs_kind: WorkerKind, launcher: Launcher
) -> None:
    cluster = clean
    a, b = _tags_on_two_masters(cluster)
    curl = cluster.url()
    ids = {p: prefixed.run(p, "enqueue", cluster.url(cluster.owner_of(p)), "many", curl, "{obs}:two", "10", "0",
                           "default", p) for p in (a, b)}
    proc = launcher.burst(asyncjobs_kind, ["default"], "--cluster", "--key-prefix", a, "--key-prefix", b,
                          concurrency=4, timeout=90, url=curl)
    for p in (a, b):
        got = _statuses(cluster.url(cluster.owner_of(p)), p, ids[p])
        assert set(got.values()) == {"finished"}, (p, got, proc.output())
    assert sorted(_records(cluster, "{obs}:two")) == sorted(f"{p}{i}" for p in (a, b) for i in range(10))
    assert f"key prefix={a}" in proc.output() and f"key prefix={b}" in proc.output()


def test_cron_on_a_cluster_keeps_every_key_in_the_prefix_slot(
    clean: RedisCluster, asyncjobs_kind: WorkerKind, launcher: Launcher, tmp_path: Any
) -> None:
    """--cron under RQ_KEY_PREFIX={rq} on a cluster: the lease, the tick state and markers, and RQ's cron
    monitoring keys are all under the prefix (one slot), and the ticks are enqueued there."""
    cluster = clean
    conf = tmp_path / "cron_config.py"
    conf.write_text('from rq import cron\nfrom compat import jobs\n\ncron.register(jobs.add, "cronq", args=(1, 2), '
                    'interval=1, name="tick")\n')
    seed = next(p for p in cluster.ports if p != cluster.owner_of(PREFIX))
    aj = launcher.start(asyncjobs_kind, ["default"], "--cluster", "--cron", str(conf), "--cron-lease", "2",
                        "--name", "cron-cl", env={"RQ_KEY_PREFIX": PREFIX}, url=cluster.url(seed))
    owner = cluster.client(cluster.owner_of(PREFIX))
    wait_for(lambda: owner.llen(f"{PREFIX}:queue:cronq") >= 3, 30, message=aj.output)
    assert owner.get(f"{PREFIX}:asyncjobs:cron:leader") == b"cron-cl"
    assert owner.zcard(f"{PREFIX}:cron_job:tick:jobs") >= 3
    assert owner.zscore(f"{PREFIX}:cron_schedulers", "cron-cl") is not None
    assert owner.hexists(f"{PREFIX}:asyncjobs:cron:last", "tick")
    # A failover of the slot's master: the cron leader follows it, and the ticks go on, each once.
    cluster.failover(PREFIX)
    new_owner = cluster.client(cluster.owner_of(PREFIX))
    seen = new_owner.llen(f"{PREFIX}:queue:cronq")
    wait_for(lambda: new_owner.llen(f"{PREFIX}:queue:cronq") >= seen + 3, 60, message=aj.output)
    ids = [j.decode() for j in new_owner.lrange(f"{PREFIX}:queue:cronq", 0, -1)]
    scheduled = sorted(pickle.loads(new_owner.hget(f"{PREFIX}:job:{j}", "meta"))["cron_scheduled_at"] for j in ids)
    assert len(set(scheduled)) == len(scheduled), scheduled  # none twice (a tick may be missed in the outage)
    aj.stop()
    assert aj.wait(60) == 0, aj.output()
    every = redis.RedisCluster.from_url(cluster.url())
    try:
        stray = [k for k in every.scan_iter(target_nodes=redis.RedisCluster.ALL_NODES) if not k.startswith(b"{")]
    finally:
        every.close()
    assert stray == [], stray
