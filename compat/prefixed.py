"""Stock RQ 3 under another key prefix, for the tests: ``python -m compat.prefixed COMMAND URL ...``.

RQ reads ``RQ_KEY_PREFIX`` once, at ``import rq``, so a producer or reader with another prefix than the
test process's runs in its own process, with the variable set (``run``).  Commands, all through RQ's
own API, printing one JSON document:

* ``enqueue URL SCENARIO ARGS...``: enqueue a scenario, print ``{name: job_id}``;
* ``report URL ID...``: print ``{id: {status, result, exc}}`` (``Job.fetch``, ``latest_result``);
* ``stop URL ID``: ``send_stop_job_command``;
* ``limiter URL KEY``: the rate limiter's ``{allowed, waiting}``.

The URL is a plain connection: for a Redis Cluster, the node that owns the prefix's slot (as a stock
RQ 3 process must use, docs/rq-protocol.md §14).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(prefix: str, *args: str, timeout: float = 60.0) -> Any:
    """Run a command of this module under ``RQ_KEY_PREFIX=prefix``; its JSON output."""
    env = dict(os.environ, RQ_KEY_PREFIX=prefix)
    out = subprocess.run([sys.executable, "-m", "compat.prefixed", *args], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise AssertionError(f"compat.prefixed {' '.join(args)} failed under {prefix!r}:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout)


def _scenario(q: Any, name: str, args: list[str]) -> dict[str, str]:
    from rq import Retry
    from rq.rate_limit import RateLimit

    from compat import jobs

    url = args[0] if args else ""
    if name == "mixed":
        ok = q.enqueue(jobs.add, 2, 3)
        parent = q.enqueue(jobs.add, 1, 1)
        child = q.enqueue(jobs.add, 5, 5, depends_on=parent)
        flaky = q.enqueue(jobs.fail_until, url, "flaky", 1, retry=Retry(max=1))
        bad = q.enqueue(jobs.boom, "planned")
        limit = RateLimit("rk", 1)
        limited = [q.enqueue(jobs.add, i, i, rate_limit=limit) for i in range(3)]
        later = q.enqueue_in(timedelta(seconds=1), jobs.add, 7, 7)
        out = {"ok": ok.id, "parent": parent.id, "child": child.id, "flaky": flaky.id, "bad": bad.id,
               "later": later.id}
        out.update({f"limited{i}": j.id for i, j in enumerate(limited)})
        return out
    if name == "hold":
        return {"held": q.enqueue(jobs.hold, url, args[1]).id}
    if name == "many":  # URL KEY N [SECONDS [QUEUE [TAG]]]: N cluster_record jobs
        key, n = args[1], int(args[2])
        seconds = float(args[3]) if len(args) > 3 else 0.0
        if len(args) > 4:
            from rq import Queue

            q = Queue(args[4], connection=q.connection)
        tag = args[5] if len(args) > 5 else "t"
        return {f"{tag}{i}": q.enqueue(jobs.cluster_record, url, key, f"{tag}{i}", seconds).id for i in range(n)}
    if name == "cluster":  # URL: a dependency, a failure, rate-limited jobs, on a cluster
        from rq.rate_limit import RateLimit

        parent = q.enqueue(jobs.cluster_record, url, "{obs}:deps", "parent")
        child = q.enqueue(jobs.cluster_record, url, "{obs}:deps", "child", depends_on=parent)
        bad = q.enqueue(jobs.boom, "planned")
        limit = RateLimit("rk", 1)
        out = {"parent": parent.id, "child": child.id, "bad": bad.id}
        out.update({f"limited{i}": q.enqueue(jobs.cluster_record, url, "{obs}:rl", f"l{i}", rate_limit=limit).id
                    for i in range(3)})
        return out
    raise SystemExit(f"unknown scenario {name!r}")


def main(argv: list[str]) -> None:
    import redis
    from rq import Queue
    from rq.job import Job

    command, url, *rest = argv
    conn = redis.Redis.from_url(url)
    if command == "enqueue":
        print(json.dumps(_scenario(Queue("default", connection=conn), rest[0], rest[1:])))
    elif command == "report":
        report = {}
        for jid in rest:
            try:
                job = Job.fetch(jid, connection=conn)
            except Exception as exc:
                report[jid] = {"status": None, "error": f"{type(exc).__name__}: {exc}"}
                continue
            result = job.latest_result()
            report[jid] = {
                "status": getattr(job.get_status(), "value", job.get_status()),
                "result": job.return_value() if result is not None and result.type == result.Type.SUCCESSFUL else None,
                "exc": (result.exc_string or "")[-200:] if result is not None else None,
            }
        print(json.dumps(report, default=str))
    elif command == "stop":
        from rq.command import send_stop_job_command

        send_stop_job_command(conn, rest[0])
        print("{}")
    elif command == "limiter":
        from rq.rate_limit import RateLimitRegistry

        limiter = RateLimitRegistry(rest[0], connection=conn)
        print(json.dumps({"allowed": limiter.get_allowed_job_ids(), "waiting": limiter.get_rate_limited_job_ids()}))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
