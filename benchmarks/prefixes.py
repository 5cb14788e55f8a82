"""One key prefix against two on a Redis Cluster: ``python -m benchmarks prefixes`` (issue 17).

A private cluster of three masters on loopback (no replicas: they would only add replication work to
the same two cores).  Each measurement enqueues ``N`` no-op jobs with stock RQ 3 (``enqueue_many``,
one producer process per prefix, ``RQ_KEY_PREFIX`` set) and runs one ``asyncjobs-worker --cluster
--burst`` with two worker processes:

* ``one prefix``: ``--key-prefix {rq-a} --processes 2``: both processes on the node owning ``{rq-a}``;
* ``two prefixes``: ``--key-prefix {rq-a} --key-prefix {rq-b}``: one process per prefix, the prefixes'
  slots on two different masters, ``N/2`` jobs each.

Same jobs, same worker processes and concurrency; only the number of Redis nodes carrying the load
differs.  It reports jobs/s from the moment both worker processes have registered to the last job in
a FinishedJobRegistry (start-up is left out: spawned children import everything afresh), and the CPU
seconds each master spent over the whole run (its ``used_cpu_sys + used_cpu_user`` difference), and verifies that every job finished once
(each prefix's FinishedJobRegistry holds its jobs, no queue is left).  Repetitions interleave the two
set-ups.  Results: ``benchmarks/results/prefixes/prefixes-latest.md`` and a ``.jsonl`` beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from tests.testsupport.redis_cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[1]

PRODUCER = """
import sys
import redis
from rq import Queue
conn = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
n = int(sys.argv[2])
q = Queue("bench", connection=conn)
for i in range(0, n, 1000):
    q.enqueue_many([Queue.prepare_data("benchmarks.jobs.noop", (f"bjt-{sys.argv[3]}-{j}",), result_ttl=3600)
                    for j in range(i, min(i + 1000, n))])
"""

COUNT = """
import sys, json
import redis
from rq import Queue
from rq.registry import FinishedJobRegistry
conn = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
q = Queue("bench", connection=conn)
print(json.dumps({"queued": q.count, "finished": FinishedJobRegistry(queue=q).count,
                  "failed": q.failed_job_registry.count}))
"""


def _two_tags(cluster: RedisCluster) -> tuple[str, str]:
    first = "{rq-a}"
    for c in "bcdefghijklmnopqrstuvwxyz":
        other = "{rq-" + c + "}"
        if cluster.owner_of(other) != cluster.owner_of(first) and key_slot(other.encode()) != key_slot(first.encode()):
            return first, other
    raise SystemExit("no two hash tags on different masters")


def _py(code: str, prefix: str, *args: str) -> str:
    env = dict(os.environ, RQ_KEY_PREFIX=prefix)
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=str(ROOT), env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{prefix}: {out.stderr}")
    return out.stdout


def _cpu(cluster: RedisCluster, port: int) -> float:
    info = cluster.client(port).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(cluster: RedisCluster, prefixes: list[str], n: int, concurrency: int, rep: int) -> dict[str, Any]:
    for port in cluster.running_ports():
        cluster.client(port).flushall()
    per = n // len(prefixes)
    for p in prefixes:
        _py(PRODUCER, p, str(cluster.owner_of(p)), str(per), f"{rep}{p}")
    masters = sorted({cluster.owner_of(p) for p in prefixes} | set(cluster.running_ports()))
    cpu0 = {port: _cpu(cluster, port) for port in masters}
    argv = [str(Path(sys.executable).with_name("asyncjobs-worker")), "--cluster", "-u", cluster.url(), "--burst",
            "--logging-level", "WARNING", "-c", str(concurrency)]
    for p in prefixes:
        argv += ["--key-prefix", p]
    if len(prefixes) == 1:
        argv += ["--processes", "2"]
    env = dict(os.environ, BENCH_LEDGER="")
    conns = {p: cluster.client(cluster.owner_of(p)) for p in prefixes}
    proc = subprocess.Popen([*argv, "bench"], cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # The clock starts once every worker process has registered (start-up is not throughput: spawned
    # children import everything afresh) and stops when the last job is in a FinishedJobRegistry.
    deadline = time.monotonic() + 600
    while sum(c.scard(f"{p}:workers") for p, c in conns.items()) < 2 and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    t0 = time.perf_counter()
    done_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        if sum(c.zcard(f"{p}:finished:bench") for p, c in conns.items()) >= per * len(prefixes):
            done_at = time.perf_counter()
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    elapsed = (done_at or time.perf_counter()) - t0
    cpu = {port: round(_cpu(cluster, port) - cpu0[port], 2) for port in masters}
    counts = {p: json.loads(_py(COUNT, p, str(cluster.owner_of(p)))) for p in prefixes}
    ok = proc.returncode == 0 and all(c == {"queued": 0, "finished": per, "failed": 0} for c in counts.values())
    return {
        "setup": f"{len(prefixes)} prefix{'es' if len(prefixes) > 1 else ''}", "prefixes": prefixes, "jobs": per * len(prefixes),
        "rep": rep, "seconds": round(elapsed, 2), "jobs_per_s": round(per * len(prefixes) / elapsed, 1),
        "redis_cpu_s": cpu, "verified": ok, "counts": counts,
        "stderr_tail": stderr[-2000:] if not ok else "",
    }


def main(args: Any) -> int:
    out_dir = Path(args.out) / "prefixes"
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = RedisCluster(masters=3, replicas=0)
    cluster.start()
    rows: list[dict[str, Any]] = []
    try:
        a, b = _two_tags(cluster)
        for rep in range(args.repeat):
            for prefixes in ([a], [a, b]):
                row = measure(cluster, prefixes, args.n, args.concurrency, rep)
                rows.append(row)
                print(f"{row['setup']:<10} rep {rep + 1}: {row['jobs_per_s']:>8,.0f} jobs/s  redis cpu {row['redis_cpu_s']}"
                      f"  {'ok' if row['verified'] else 'FAILED ' + json.dumps(row['counts'])}", file=sys.stderr)
                if not row["verified"]:
                    print(row["stderr_tail"], file=sys.stderr)
                    return 2
    finally:
        cluster.close()
    import platform

    import redis as redis_py
    import rq

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    prov = {"date": stamp, "python": platform.python_version(), "rq": rq.__version__, "redis_py": redis_py.__version__,
            "cpus": os.cpu_count(), "n": args.n, "concurrency": args.concurrency, "repeat": args.repeat,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), capture_output=True,
                                     text=True, check=False).stdout.strip()}
    with (out_dir / f"prefixes-{stamp}.jsonl").open("w") as fh:
        fh.write(json.dumps({"provenance": prov}) + "\n")
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    lines = [
        "# One key prefix against two on a Redis Cluster",
        "",
        f"`python -m benchmarks prefixes -n {args.n} --repeat {args.repeat}` on {prov['cpus']} CPUs, "
        f"Python {prov['python']}, RQ {prov['rq']}, commit {prov['commit']}, {stamp}.  Three masters, no "
        f"replicas; {args.n} no-op jobs per run; one `asyncjobs-worker --cluster --burst -c {args.concurrency}` "
        "with two worker processes (one prefix: `--processes 2`; two prefixes: one process per prefix).",
        "",
        "| set-up | jobs/s (median) | runs | Redis CPU s per run, busiest master (median) | Redis CPU s per run, all masters (median) |",
        "|---|---|---|---|---|",
    ]
    for setup in ("1 prefix", "2 prefixes"):
        mine = [r for r in rows if r["setup"] == setup]
        rates = [r["jobs_per_s"] for r in mine]
        busiest = [max(r["redis_cpu_s"].values()) for r in mine]
        total = [sum(r["redis_cpu_s"].values()) for r in mine]
        lines.append(f"| {setup} | {statistics.median(rates):,.0f} | {', '.join(f'{x:,.0f}' for x in rates)} | "
                     f"{statistics.median(busiest):.2f} | {statistics.median(total):.2f} |")
    (out_dir / "prefixes-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
