"""A child of many parents: ``python -m benchmarks fanin [-n 3000] [--before REF]``.

Job data decides how much work a finish does in Redis: a job enqueued with ``depends_on`` N parents
is checked each time one of them ends (are all its dependencies met yet?).  Redis runs one command
or script at a time, so the longest of those checks is how long every other client of that Redis
waits (issue 18, 7a: with the whole dependencies set read at each check, 3,000 parents held Redis
for seconds in all, up to about 100 ms at a time).

One private redis-server; for each contender N no-op parents and one child depending on all of
them are enqueued with stock RQ, ``SLOWLOG`` records every command (threshold 0), the contender
drains the queue in burst mode, and the child must end ``finished`` after each parent ran once.
Reported per contender: the drain time, the longest single command or script and the total time
Redis spent in commands of at least 1 ms.  Contenders: stock ``rq worker --burst -w
rq.worker.SimpleWorker`` (at ``--n-stock`` parents: its drain grows with the square of N),
``asyncjobs-worker --burst --concurrency 50`` (at ``--n-stock`` and ``-n``) and, with ``--before REF``,
the asyncjobs package as of git revision REF.  Writes ``benchmarks/results/fanin/fanin-latest.md``
and a ``.jsonl`` beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import QUEUE, Bench, Contender, Progress, workloads
from benchmarks.report import save_run

SLOWLOG_LEN = 1_000_000


def measure(bench: Bench, c: Contender, n: int) -> dict[str, Any]:
    from rq import Queue
    from rq.job import Job

    wl = workloads()["noop"]
    r = bench.r
    r.flushdb()  # the benchmark's own private server
    q = Queue(QUEUE, connection=r)
    parents: list[str] = []
    for i in range(0, n, 1000):
        with r.pipeline() as pipe:
            jobs = q.enqueue_many([Queue.prepare_data(wl.func, args=(f"p{j}",)) for j in range(i, min(n, i + 1000))],
                                  pipeline=pipe)
            pipe.execute()
        parents += [j.id for j in jobs]
    t_child = time.perf_counter()
    child = q.enqueue(wl.func, "child", depends_on=parents)
    enqueue_child_s = time.perf_counter() - t_child
    r.config_set("slowlog-max-len", SLOWLOG_LEN)
    r.config_set("slowlog-log-slower-than", 0)
    r.slowlog_reset()
    ledger = bench.tmp / f"ledger-fanin-{c.name}"
    ledger.write_bytes(b"")
    env = bench.worker_env(wl, c, ledger)
    t0 = time.perf_counter()
    for cmd in bench.commands(wl, c, "fanin", n):
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=bench.timeout_s)
    drain_s = time.perf_counter() - t0
    r.config_set("slowlog-log-slower-than", 10_000)
    entries = [e for e in r.slowlog_get(SLOWLOG_LEN)  # not the benchmark's own SLOWLOG/CONFIG calls
               if _command_name(e["command"]).upper() not in ("SLOWLOG", "CONFIG")]
    durations_ms = [e["duration"] / 1000.0 for e in entries]
    longest = max(entries, key=lambda e: e["duration"], default=None)
    problems: list[str] = []
    status = Job.fetch(child.id, connection=r).get_status(refresh=True)
    if str(status) not in ("finished", "JobStatus.FINISHED"):
        problems.append(f"child ended {status!r}, not finished")
    ran = sum(len(Job.fetch(p, connection=r).results()) for p in parents[:: max(1, n // 200)])
    sampled = len(parents[:: max(1, n // 200)])
    if ran != sampled:
        problems.append(f"{ran} results for {sampled} sampled parents (each must run once)")
    return {
        "contender": c.name,
        "n": n,
        "enqueue_child_s": round(enqueue_child_s, 3),
        "drain_s": round(drain_s, 3),
        "longest_ms": round(max(durations_ms, default=0.0), 3),
        "longest_command": _command_name(longest["command"]) if longest else "-",
        "blocked_ms_over_1ms": round(sum(d for d in durations_ms if d >= 1.0), 1),
        "commands_logged": len(entries),
        "verified": not problems,
        "problems": problems,
    }


def _command_name(command: Any) -> str:
    words = command.split() if isinstance(command, (bytes, str)) else list(command)
    first = words[0] if words else b"-"
    return first.decode() if isinstance(first, bytes) else str(first)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| contender | parents | drain s | longest command ms | Redis ms in commands >= 1 ms | verified |",
             "|---|--:|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {r['n']:,} | {r['drain_s']:.2f} | {r['longest_ms']:.1f} "
                     f"({r['longest_command']}) | {r['blocked_ms_over_1ms']:.0f} | "
                     f"{'ok' if r['verified'] else 'FAILED: ' + '; '.join(r['problems'])} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    progress = Progress(not args.no_progress)
    ours = [*([f"asyncjobs-c50@{args.before}"] if args.before else []), "asyncjobs-c50"]
    # Stock RQ checks every dependency at each parent's end too (from Python, pipelined): its drain
    # grows with the square of N, so it runs at --n-stock, and asyncjobs at that size as well.
    plan = [("rq-simple", args.n_stock), *((name, args.n_stock) for name in ours if args.n_stock != args.n),
            *((name, args.n) for name in ours)]
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    with Bench(progress=progress, redis_binary=args.redis_server) as bench:
        for name, n in plan:
            progress.label = f"[fanin] {name:<24} n={n}"
            rec = measure(bench, Contender.parse(name), n)
            progress.done(f"longest {rec['longest_ms']:.1f} ms  {'ok' if rec['verified'] else 'FAILED'}")
            rows.append(rec)
            info = bench.redis_info()
    save_run(Path(args.out), "fanin", rows,
             f"## A child of N parents ({{stamp}}; Redis {info.get('redis_version')}; SLOWLOG of every command "
             "while the contender drains the queue)", table(rows))
    return 0 if all(r["verified"] for r in rows) else 2
