"""A malformed job abandoned in rq:wip breaks RQ's maintenance and ``rq info`` for its queue.

asyncjobs claims a job (marks it started in ``rq:wip``) before it parses the hash; a malformed
field is repaired only when the job's failure is recorded.  If the worker dies in between (here:
the claim's reply is held by the fault proxy, then the worker is SIGKILLed), the malformed job
stays in rq:wip.  Once its heartbeat deadline passes, every ``StartedJobRegistry.cleanup`` (RQ's
maintenance in every worker, stock or asyncjobs, and every ``rq info``) raises ValueError on it,
for good.  A stock worker never puts such a job in rq:wip (it fails at ``Job.fetch``, before
starting it).  Deterministic: fails every run (about 10 s).

    .venv/bin/python -m tests.chaos.repros.malformed_job_abandoned
"""

from __future__ import annotations

import subprocess
import sys
import time

import redis
from rq import Queue
from rq.registry import StartedJobRegistry

from tests.testsupport.faultproxy import FaultProxy
from tests.testsupport.redis_server import RedisServer
from tests.testsupport.workers import rq_command, run_asyncjobs_worker, wait_for


def main() -> int:
    server = RedisServer()
    server.start()
    try:
        conn = redis.Redis.from_url(server.url)
        with FaultProxy("127.0.0.1", server.port) as proxy:
            worker = run_asyncjobs_worker(proxy.url(), "default", "--job-monitoring-interval", "1")
            with worker:
                wait_for(lambda: conn.keys("rq:worker:*"), timeout=30, message="the worker to register")
                # The next claim that takes a job (store.py names its token rq:asyncjobs:claim:...) runs
                # in Redis; its reply is held, and the worker dies before it has recorded anything.
                proxy.delay_next_reply(b"rq:asyncjobs:claim:", 60)
                with conn.pipeline() as pipe:  # one MULTI: the worker only ever sees the malformed hash
                    job = Queue("default", connection=conn).enqueue(
                        "tests.chaos.jobs.sync_work", key="k", seconds=0, pipeline=pipe
                    )
                    pipe.hset(job.key, "created_at", "yesterday")  # as a buggy producer might write it
                    pipe.execute()
                wait_for(
                    lambda: conn.zcard("rq:wip:default"), timeout=30,
                    message=lambda: f"the job to be claimed (queue {conn.lrange('rq:queue:default', 0, -1)}); "
                    f"worker log:\n{worker.output()[-3000:]}",
                )
                worker.kill()
            print("abandoned in rq:wip:", conn.zrange("rq:wip:default", 0, -1))
        try:
            StartedJobRegistry("default", connection=conn).cleanup(timestamp=time.time() + 3600)
            cleanup = "ok"
        except ValueError as exc:
            cleanup = f"raised {exc!r}"
        print("RQ's abandoned-job cleanup, once the deadline has passed:", cleanup)
        # rq info cleans with the current time: move the deadline into the past as the clock would.
        conn.zadd("rq:wip:default", {m: 0 for m in conn.zrange("rq:wip:default", 0, -1)}, xx=True)
        info = subprocess.run([*rq_command(), "info", "-u", server.url], capture_output=True, text=True, check=False)
        print("rq info exit code:", info.returncode, (info.stderr.strip().splitlines() or [""])[-1])
        return 1 if cleanup != "ok" or info.returncode != 0 else 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
