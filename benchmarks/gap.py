"""Where a slot's time goes: ``python -m benchmarks gap [-n 3000] [--seconds 0.05] [--before REF]``.

Issue 23's first goal is 50 ms jobs at ``--concurrency 50`` at 95% of the no-queue ceiling, and it says
to find where the rest goes before changing code.  Each job here (``benchmarks.jobs.timed_sleep_async``)
records when it started and ended (CLOCK_MONOTONIC, the same clock in every process) in the ledger, so
from one burst drain this reports, per contender:

* jobs/s against the no-queue run of the same repetition (``ceiling-cC``: the same coroutine run C at a
  time by plain asyncio, no Redis: what the issue's table calls the ceiling, ~979/s there, as
  ``asyncio.sleep`` itself overshoots), against the nominal ceiling (concurrency / job time), and slot
  occupancy: the job time over the slot time;
* the gap: from a job's end to the start of the job that took its slot.  With the slots always full,
  the i-th start after the first ``slots`` fills the slot freed by the i-th end (both sorted), so the gap
  of end i is ``starts[i + slots] - ends[i]``: p50, p90, p99 and the mean;
* Redis's share of it: the exchange scripts' own time (``INFO commandstats``: calls, microseconds per
  call), per job.

Stock ``rq worker --burst -w rq.worker.SimpleWorker`` runs beside (one slot, ``--n-stock`` jobs: its
gap is its own fetch, start and finish), and with ``--before REF`` the asyncjobs package as of git
revision REF, and with ``--batches 4,16`` this checkout at those ``--claim-batch`` values too (the
default is ``max(8, concurrency/8)``, lifted while the loop is busy), and with ``--prefetches 0,8`` at
those ``--prefetch`` values (the default: as many as the slots free in 10 ms, at most concurrency/8).
Every job is verified to have run exactly once.  Writes
``benchmarks/results/gap/gap-latest.md`` and a ``.jsonl`` beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import QUEUE, Bench, Contender, Progress, Workload, token
from benchmarks.report import save_run

FUNC = "benchmarks.jobs.timed_sleep_async"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def measure(bench: Bench, c: Contender, n: int, seconds: float) -> dict[str, Any]:
    from rq import Queue

    wl = Workload("timed_sleep_async", FUNC, seconds, True)
    r = bench.r
    r.flushdb()  # the benchmark's own private server
    run_id = os.urandom(4).hex()
    tokens = [token(run_id, i) for i in range(n)]
    q = Queue(QUEUE, connection=r)
    for i in range(0, n, 1000):
        with r.pipeline() as pipe:
            q.enqueue_many([Queue.prepare_data(FUNC, args=(t, seconds), job_id=t) for t in tokens[i:i + 1000]],
                           pipeline=pipe)
            pipe.execute()
    ledger = bench.tmp / f"gap-{run_id}"
    ledger.write_bytes(b"")
    env = bench.worker_env(wl, c, ledger)
    r.config_resetstat()
    for cmd in bench.commands(wl, c, run_id, n):
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=bench.timeout_s)
    stats = r.info("commandstats")
    rows = [line.split() for line in ledger.read_text().splitlines() if line.strip()]
    seen = Counter(row[0] for row in rows)
    problems = []
    if set(seen) != set(tokens) or any(k > 1 for k in seen.values()):
        problems.append(f"{len(set(tokens) - set(seen))} never ran, {sum(1 for k in seen.values() if k > 1)} ran twice")
    starts = sorted(float(row[1]) for row in rows)
    ends = sorted(float(row[2]) for row in rows)
    slots = c.total_concurrency
    span = ends[-1] - starts[0] if rows else 0.0
    busy = sum(float(row[2]) - float(row[1]) for row in rows)
    gaps = [starts[i + slots] - ends[i] for i in range(len(ends) - slots)] if len(starts) > slots else []
    evalsha = stats.get("cmdstat_evalsha", {})
    script_us = float(evalsha.get("usec", 0))
    ceiling = slots / seconds
    return {
        "contender": c.name,
        "n": n,
        "slots": slots,
        "job_s": seconds,
        "jobs_per_s": round(n / span, 1) if span else None,
        "ceiling_per_s": round(ceiling, 1),
        "of_ceiling_pct": round(100.0 * n / span / ceiling, 1) if span else None,
        "occupancy_pct": round(100.0 * busy / (slots * span), 1) if span else None,
        "gap_ms": {k: round(v * 1000, 2) for k, v in (
            ("p50", _pct(gaps, 0.5)), ("p90", _pct(gaps, 0.9)), ("p99", _pct(gaps, 0.99)),
            ("mean", statistics.fmean(gaps) if gaps else 0.0))},
        "scripts": int(evalsha.get("calls", 0)),
        "script_ms_per_call": round(script_us / 1000 / max(1, int(evalsha.get("calls", 0))), 3),
        "redis_ms_per_job": round(sum(float(v.get("usec", 0)) for v in stats.values()
                                      if isinstance(v, dict)) / 1000 / max(1, n), 4),
        "verified": not problems,
        "problems": problems,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| rep | contender | jobs | jobs/s | of the no-queue run | of ceiling | slot occupancy "
             "| gap p50 / p90 / p99 / mean ms | scripts (ms each) | Redis ms/job | verified |",
             "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        g = r["gap_ms"]
        no_queue = f"{r['of_no_queue_pct']}% of {r['no_queue_per_s']:g}" if "of_no_queue_pct" in r else "-"
        lines.append(
            f"| {r.get('rep', '')} | {r['contender']} | {r['n']:,} | {r['jobs_per_s']} | {no_queue} "
            f"| {r['of_ceiling_pct']}% of {r['ceiling_per_s']:g} "
            f"| {r['occupancy_pct']}% | {g['p50']} / {g['p90']} / {g['p99']} / {g['mean']} "
            f"| {r['scripts']} ({r['script_ms_per_call']}) | {r['redis_ms_per_job']} "
            f"| {'ok' if r['verified'] else 'FAILED: ' + '; '.join(r['problems'])} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    progress = Progress(not args.no_progress)
    plan = [(f"ceiling-c{args.concurrency}", args.n), ("rq-simple", args.n_stock),
            *([(f"asyncjobs-c{args.concurrency}@{args.before}", args.n)] if args.before else []),
            (f"asyncjobs-c{args.concurrency}", args.n),
            *[(f"asyncjobs-c{args.concurrency}-b{b}", args.n) for b in args.batches],
            *[(f"asyncjobs-c{args.concurrency}-f{f}", args.n) for f in args.prefetches]]
    rows: list[dict[str, Any]] = []
    with Bench(progress=progress, redis_binary=args.redis_server, sleep_s=args.seconds) as bench:
        for rep in range(1, args.repeat + 1):
            no_queue: dict[str, Any] | None = None
            for name, n in plan:
                progress.label = f"[gap] {name:<24} n={n}"
                t0 = time.perf_counter()
                rec = measure(bench, Contender.parse(name), n, args.seconds)
                rec["rep"] = rep
                if rec["contender"].startswith("ceiling"):
                    no_queue = rec
                if no_queue is not None and rec["slots"] == no_queue["slots"] and no_queue["jobs_per_s"]:
                    rec["no_queue_per_s"] = no_queue["jobs_per_s"]
                    rec["of_no_queue_pct"] = round(100.0 * (rec["jobs_per_s"] or 0) / no_queue["jobs_per_s"], 1)
                progress.done(f"{rec['of_ceiling_pct']}% of ceiling, {rec.get('of_no_queue_pct', '-')}% of the "
                              f"no-queue run, gap mean {rec['gap_ms']['mean']} ms ({time.perf_counter() - t0:.0f} s)")
                rows.append(rec)
        version = bench.redis_info().get("redis_version")
    save_run(Path(args.out), "gap", rows,
             f"## Where a slot's time goes ({{stamp}}; {args.seconds * 1000:g} ms async jobs; Redis {version}; "
             f"{args.repeat} repetition(s))", table(rows))
    return 0 if all(r["verified"] for r in rows) else 2
