"""After a worker crash, ``Job.get_executions()`` raises for a minute on the abandoned job.

The claim writes ``rq:execution:<id>:<eid>`` with the heartbeat TTL (interval + 60 s) and its
``rq:executions:<id>`` entry with a score and TTL 60 s longer, exactly as stock RQ does; nobody
deletes them after a crash (RQ's abandoned-job cleanup leaves them to expire, docs/rq-protocol.md
§10.2).  So from the hash's expiry until the entry's, ``get_executions()`` lists the execution
and then cannot load it: ``ValueError: Execution ... not found in Redis``.  Stock RQ has the same
window; asyncjobs could close it for its own executions by giving the hash the entry's TTL (in
the claim and the heartbeat).  Deterministic: fails every run, about 65 s (interval 1 s).

    .venv/bin/python -m tests.chaos.repros.executions_after_crash
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import redis
from rq import Queue
from rq.job import Job

from tests.testsupport.redis_server import RedisServer
from tests.testsupport.workers import run_asyncjobs_worker, wait_for


def main() -> int:
    server = RedisServer()
    server.start()
    ledger = tempfile.NamedTemporaryFile(prefix="ledger-", delete=False)  # noqa: SIM115
    try:
        conn = redis.Redis.from_url(server.url)
        env = {"CHAOS_LEDGER": ledger.name, "CHAOS_SIDE_URL": server.url}
        job = Queue("default", connection=conn).enqueue("tests.chaos.jobs.sync_work", key="k", seconds=600)
        with run_asyncjobs_worker(server.url, "default", "--job-monitoring-interval", "1", env=env) as worker:
            wait_for(lambda: conn.zcard("rq:wip:default"), timeout=30, message="the job to start")
            worker.kill()
        killed = time.monotonic()
        while time.monotonic() - killed < 130:
            try:
                Job.fetch(job.id, connection=conn).get_executions()
            except ValueError as exc:
                print(f"{time.monotonic() - killed:.0f}s after the crash, get_executions() raised: {exc}")
                return 1
            time.sleep(1)  # the window opens when the TTL runs out: polling the clock, nothing else
        print("get_executions() never raised")
        return 0
    finally:
        server.close()
        ledger.close()
        os.unlink(ledger.name)


if __name__ == "__main__":
    sys.exit(main())
