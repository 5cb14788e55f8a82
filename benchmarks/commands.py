"""Redis commands per job, by command: ``python -m benchmarks commands [-n 2000] [--before REF]``.

One private redis-server; for each contender the harness enqueues N no-op jobs with stock RQ, resets
``INFO commandstats``, drains them in burst mode and verifies exactly-once completion
(:meth:`benchmarks.harness.Bench.measure`).  ``INFO commandstats`` counts the commands a Lua script
runs as well as the ``EVALSHA`` itself, so the table is what Redis executed per job.  Contenders:
stock ``rq worker --burst -w rq.worker.SimpleWorker``, ``asyncjobs-worker --burst --concurrency 50``
and, with ``--before REF``, the asyncjobs package as of git revision REF (same jobs, same run).

Counts are deterministic up to the batching of claims (a claim of many jobs costs one EVALSHA and a
few per-call commands): they do not depend on the machine's load the way timings do.
Writes ``benchmarks/results/commands/commands-latest.md`` and a ``.jsonl`` beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.harness import Bench, Contender, Progress, workloads
from benchmarks.report import save_run


def contenders(before: str | None, concurrency: int) -> list[str]:
    names = ["rq-simple"]
    if before:
        names.append(f"asyncjobs-c{concurrency}@{before}")
    names.append(f"asyncjobs-c{concurrency}")
    return names


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per command, one column per contender (calls per job), totals last."""
    names = [r["contender"] for r in rows]
    commands = sorted({k for r in rows for k in r["redis_cmds_by_name"]},
                      key=lambda k: (-max(r["redis_cmds_by_name"].get(k, 0.0) for r in rows), k))
    head = "| command | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    rare = [k for k in commands if all(r["redis_cmds_by_name"].get(k, 0.0) < 0.01 for r in rows)]
    for k in commands:
        if k in rare:
            continue
        cells = []
        for r in rows:
            v = r["redis_cmds_by_name"].get(k)
            cells.append(f"{v:.2f}" if v else "-")
        lines.append(f"| {k.replace('|', ' ')} | " + " | ".join(cells) + " |")
    if rare:
        lines.append(f"| other ({', '.join(rare).replace('|', ' ')}) | " + " | ".join(
            f"{sum(r['redis_cmds_by_name'].get(k, 0.0) for k in rare):.2f}" for r in rows) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['redis_cmds_per_job']:.2f}**" for r in rows) + " |")
    lines.append("| Redis CPU ms/job (noisy) | " + " | ".join(
        f"{r['redis_cpu_s_per_1k'] or 0:.3f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    wl = workloads()["noop"]
    progress = Progress(not args.no_progress)
    rows: list[dict[str, Any]] = []
    rc = 0
    with Bench(progress=progress, redis_binary=args.redis_server) as bench:
        for name in contenders(args.before, args.concurrency):
            c = Contender.parse(name)
            n = min(args.n, args.n_stock) if c.kind.startswith("rq-") else args.n
            progress.label = f"[commands] {name:<24} n={n}"
            rec = bench.measure(wl, c, n)
            progress.done(f"{rec['redis_cmds_per_job']} commands/job  "
                          f"{'ok' if rec['verified'] else 'FAILED: ' + '; '.join(rec['problems'])}")
            if not rec["verified"]:
                rc = 2
            rows.append(rec)
    save_run(Path(args.out), "commands", rows,
             f"## Redis commands per no-op job ({{stamp}}; n={args.n}, stock n={min(args.n, args.n_stock)}; "
             "commands run inside Lua included)", table(rows))
    return rc
