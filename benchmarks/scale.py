"""How cost grows (issue 23): ``python -m benchmarks scale [--quick]``.

Each dimension is swept with everything else at its base (one asyncjobs process, ``--concurrency
50``, one queue, no-op jobs, a backlog of ``-n`` jobs), every measurement a real burst drain by
:meth:`benchmarks.harness.Bench.measure` (enqueued with stock RQ, verified exactly once):

* ``queues``: the worker also listens on K-1 empty queues ahead of the one with jobs (1, 10, 100,
  1,000): every claim walks them;
* ``backlog``: jobs already queued (10,000 and 100,000 by default; ``--backlogs`` for more);
* ``concurrency``: 50 ms ``asyncio.sleep`` jobs at 10, 50, 200, 1,000 (the no-queue ceiling is
  concurrency / 50 ms);
* ``workers``: ``--processes`` 1, 2, 4 on one Redis (no-op jobs).

For each: jobs/s, worker CPU ms/job, Redis CPU ms/job and Redis commands/job, and their ratio to the
dimension's first point (a per-job cost that grows with the dimension shows as a ratio above 1).
On a shared two-core machine the CPU figures move with the load; commands/job do not.
Writes ``benchmarks/results/scale/scale-latest.md``, a ``.jsonl`` and ``scale.png``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import Bench, Contender, Progress, workloads

DIMENSIONS = ("queues", "backlog", "concurrency", "workers")


def plan(args: argparse.Namespace) -> list[tuple[str, int, str, str, int, int]]:
    """(dimension, value, workload, contender, n, empty queues) per measurement: each point for
    asyncjobs, then (``--before REF``) for asyncjobs as of REF, then (``--stock``) for stock RQ
    SimpleWorkers where the point applies to them (queues, workers; ``--stock-n`` jobs each)."""
    out: list[tuple[str, int, str, str, int, int]] = []
    for dim, value, wname, cname, n, empty in _points(args):
        out.append((dim, value, wname, cname, n, empty))
        if args.before:
            out.append((dim, value, wname, f"{cname}@{args.before}", n, empty))
        if args.stock and dim in ("queues", "workers"):
            stock = "rq-simple" if value == 1 or dim == "queues" else f"rq-simple-x{value}"
            out.append((dim, value, wname, stock, min(n, args.stock_n), empty))
    return out


def _points(args: argparse.Namespace) -> list[tuple[str, int, str, str, int, int]]:
    n = args.n
    out: list[tuple[str, int, str, str, int, int]] = []
    for dim in args.dimensions.split(","):
        if dim == "queues":
            out += [(dim, k, "noop", "asyncjobs-c50", n, k - 1) for k in _ints(args.queue_counts)]
        elif dim == "backlog":
            out += [(dim, b, "noop", "asyncjobs-c50", b, 0) for b in _ints(args.backlogs)]
        elif dim == "concurrency":
            # about 3 s of work at the ceiling (concurrency / 50 ms), at least 2,000 jobs (start-up)
            out += [(dim, c, "sleep_async", f"asyncjobs-c{c}", max(2000, min(n, c * 60)), 0)
                    for c in _ints(args.concurrencies)]
        elif dim == "workers":
            out += [(dim, p, "noop", f"asyncjobs-c50-p{p}" if p > 1 else "asyncjobs-c50", n, 0)
                    for p in _ints(args.processes)]
        else:
            raise SystemExit(f"unknown dimension {dim!r}: choose from {', '.join(DIMENSIONS)}")
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["## How cost grows (python -m benchmarks scale)", ""]
    for dim in DIMENSIONS:
        rs = [r for r in rows if r["dimension"] == dim]
        if not rs:
            continue
        lines += [f"### {dim}", "",
                  "| " + dim + " | contender | n | jobs/s | worker CPU ms/job | x first | Redis CPU ms/job | x first "
                  "| Redis cmds/job | exactly once |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        firsts: dict[str, dict[str, Any]] = {}
        for r in rs:
            base = firsts.setdefault(_family(r["contender"]), r)

            def ratio(key: str, r: dict[str, Any] = r, base: dict[str, Any] = base) -> str:
                a, b = r.get(key), base.get(key)
                return f"{a / b:.2f}" if a and b else "-"
            lines.append(
                f"| {r['value']:,} | {_family(r['contender'])} | {r['n']:,} | {r['jobs_per_s'] or 0:,.0f} | {r['cpu_s_per_1k']:.3f} | "
                f"{ratio('cpu_s_per_1k')} | {r['redis_cpu_s_per_1k'] or 0:.3f} | {ratio('redis_cpu_s_per_1k')} | "
                f"{r['redis_cmds_per_job'] or 0:.2f} | {'yes' if r['verified'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def _family(contender: str) -> str:
    """The row's contender without its size: "asyncjobs", "asyncjobs@REF" or "rq-simple"."""
    name, _, ref = contender.partition("@")
    family = "rq-simple" if name.startswith("rq-simple") else name.split("-c")[0]
    return f"{family}@{ref}" if ref else family


def chart(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [d for d in DIMENSIONS if any(r["dimension"] == d for r in rows)]
    if not dims:
        return
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 3.8), squeeze=False)
    for ax, dim in zip(axes.flat, dims, strict=False):
        rs = [r for r in rows if r["dimension"] == dim and _family(r["contender"]) == "asyncjobs"]
        xs = [r["value"] for r in rs]
        ax.plot(xs, [r["cpu_s_per_1k"] for r in rs], marker="o", label="worker CPU ms/job")
        ax.plot(xs, [r["redis_cpu_s_per_1k"] or 0 for r in rs], marker="s", label="Redis CPU ms/job")
        ax.set_xscale("log")
        ax.set_title(dim, fontsize=10)
        ax.set_xlabel(dim)
        ax.grid(True, which="both", alpha=0.3)
        twin = ax.twinx()
        twin.plot(xs, [r["jobs_per_s"] or 0 for r in rs], marker="^", color="gray", linestyle="--",
                  label="jobs/s")
        twin.set_ylabel("jobs/s")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.n = min(args.n, 2000)
        args.backlogs = "2000,20000"
        args.queue_counts = "1,100"
        args.concurrencies = "10,200"
        args.processes = "1,2"
    wl = workloads()
    progress = Progress(not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    rc = 0
    with Bench(progress=progress, redis_binary=args.redis_server, timeout_s=args.timeout) as bench:
        for dim, value, wname, cname, n, empty in plan(args):
            bench.empty_queues = empty
            progress.label = f"[scale] {dim}={value:<7} {cname:<20} n={n}"
            rec = bench.measure(wl[wname], Contender.parse(cname), n)
            rec.update(dimension=dim, value=value)
            progress.done(f"{rec['jobs_per_s'] or 0:,.0f} jobs/s  cpu {rec['cpu_s_per_1k']:.3f} ms/job  "
                          f"{'ok' if rec['verified'] else 'FAILED: ' + '; '.join(rec['problems'])}")
            if not rec["verified"]:
                rc = 2
            rows.append(rec)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with (out / f"scale-{stamp}.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    text = markdown(rows)
    (out / "scale-latest.md").write_text(text)
    chart(out / "scale.png", rows)
    print(text)
    return rc
