"""Benchmark entry point.

    python -m benchmarks run [--workloads noop,smtp] [--contenders rq-simple,asyncjobs-c50] [-n N]
                             [--repeat R] [--quick] [--out benchmarks/results]
    python -m benchmarks plan --rate 200 --latency-ms 20 [--workload smtp]
    python -m benchmarks ops [--repeat 5]     # overhead of --metrics-port/--health-port
    python -m benchmarks prefixes [-n 20000]  # RQ 3 on a Redis Cluster: one key prefix against two
    python -m benchmarks limits [-n 5000]     # queue limits: check cost, rate accuracy, a queue beside
    python -m benchmarks commands [-n 2000] [--before REF]  # Redis commands per job, by command
    python -m benchmarks profile [-n 20000] [--workload noop_async] [--before REF]  # worker CPU per job
    python -m benchmarks scale [--quick]      # cost as queues, backlog, concurrency and workers grow
    python -m benchmarks list

Exit status: 0 when every measurement verified exactly-once completion, 2 when
any job was lost, duplicated or failed (the run stops at the first such
measurement unless --keep-going), 1 on other errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.harness import (
    ROOT,
    Bench,
    Contender,
    Progress,
    VerificationError,
    Workload,
    asyncjobs_available,
    workloads,
)

DEFAULT_MATRIX: dict[str, list[str]] = {
    "noop": ["rq-fork", "rq-simple", "rq-simple-x2", "rq-simple-x8", "saq-c50",
             "asyncjobs-c50", "asyncjobs-c200", "asyncjobs-c500", "asyncjobs-c50-p2"],
    "noop_async": ["rq-simple", "asyncjobs-c50", "ceiling-c50"],
    "sleep_async": ["rq-simple-x8", "saq-c50", "asyncjobs-c10", "asyncjobs-c50", "asyncjobs-c200",
                    "asyncjobs-c500", "ceiling-c50", "ceiling-c500"],
    "sleep_sync": ["rq-simple-x8", "asyncjobs-c50"],
    "smtp": ["rq-fork", "rq-simple-x8", "saq-c50", "asyncjobs-c50", "asyncjobs-c200", "ceiling-c50"],
    "sms": ["rq-fork", "rq-simple-x8", "saq-c50", "asyncjobs-c50", "asyncjobs-c200", "ceiling-c50"],
}
# Paced runs (latency at half capacity): contender -> the no-op row whose rate sets the pace.
PACED = ["rq-simple", "asyncjobs-c50"]


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def choose_n(c: Contender, w: Workload, fixed: int | None, seconds: float, n_min: int, n_max: int) -> int:
    if fixed:
        return fixed
    return int(max(n_min, min(n_max, c.expected_rate(w) * seconds)))


def plan_matrix(args: argparse.Namespace, wl: dict[str, Workload], progress: Progress) -> list[tuple[Workload, Contender]]:
    names = _csv(args.workloads) or list(DEFAULT_MATRIX)
    for n in names:
        if n not in wl:
            raise SystemExit(f"unknown workload {n!r}: choose from {', '.join(wl)}")
    have_async = asyncjobs_available()
    if not have_async:
        progress.note("note: asyncjobs-worker is not runnable yet (`asyncjobs-worker --help` failed); "
                      "asyncjobs contenders are skipped")
    extra = _csv(args.contenders)
    matrix: list[tuple[Workload, Contender]] = []
    for name in names:
        w = wl[name]
        cnames = extra or DEFAULT_MATRIX[name]
        for cn in cnames:
            try:
                c = Contender.parse(cn)
            except ValueError as exc:
                raise SystemExit(str(exc)) from exc
            if c.kind == "asyncjobs" and not have_async:
                continue
            if c.kind == "ceiling" and not w.is_async:
                continue  # the no-queue ceiling runs the coroutine: async workloads only
            if c.kind == "saq" and args.no_saq:
                continue
            matrix.append((w, c))
    return matrix


def cmd_run(args: argparse.Namespace) -> int:
    if args.quick:
        args.repeat = args.repeat or 1
        args.seconds = min(args.seconds, 1.0)
    repeat = args.repeat or 3
    wl = workloads(args.smtp_delay_ms, args.sms_delay_ms)
    progress = Progress(not args.no_progress)
    matrix = plan_matrix(args, wl, progress)
    out_dir = Path(args.out)
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    measurements: list[dict[str, Any]] = []
    transport_rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with Bench(smtp_delay_ms=args.smtp_delay_ms, sms_delay_ms=args.sms_delay_ms, sms_transport=args.sms_transport,
               loop=args.loop, timeout_s=args.timeout, progress=progress, redis_binary=args.redis_server) as bench:
        prov = report.provenance(bench.redis_info().get("redis_version"), args.loop, args.sms_transport)
        total = len(matrix) * repeat
        k = 0
        try:
            # Repetitions interleave contenders (rep-major) so slow drift hits every contender alike.
            for rep in range(repeat):
                for w, c in matrix:
                    k += 1
                    n = choose_n(c, w, args.n, args.seconds, args.n_min, args.n_max)
                    progress.label = f"[{k}/{total}] {w.name:<11} {c.name:<18} rep {rep + 1}/{repeat} n={n}"
                    rec = bench.measure(w, c, n, rep)
                    measurements.append(rec)
                    progress.done(
                        f"{rec['jobs_per_s'] or 0:>9,.1f} jobs/s  rss {rec['peak_rss_mb']:.0f} MB  "
                        f"{'ok' if rec['verified'] else 'FAILED: ' + '; '.join(rec['problems'])}")
                    if not rec["verified"]:
                        failed.append(rec)
                        if not args.keep_going:
                            raise VerificationError(f"{c.name} on {w.name}: " + "; ".join(rec["problems"]))
            if not args.no_paced and (not _csv(args.workloads) or "noop" in _csv(args.workloads)):
                measurements += run_paced(bench, wl, measurements, args, progress, failed)
            if not args.no_transport and (not _csv(args.workloads) or "sms" in _csv(args.workloads)):
                transport_rows = run_transport(bench, args, progress)
        except VerificationError as exc:
            progress.note(f"\nEXACTLY-ONCE VERIFICATION FAILED: {exc}")
            for f in failed[-1:]:
                if f.get("worker_log_tail"):
                    progress.note("worker log tail:\n" + f["worker_log_tail"])
        finally:
            summaries = report.summarise(measurements, wl | _paced_workloads(wl))
            target_rows = report.targets(summaries)
            jsonl = out_dir / f"{stamp}.jsonl"
            prov["elapsed_s"] = round(time.perf_counter() - t_start, 1)
            prov["argv"] = sys.argv[1:]
            report.write_jsonl(jsonl, [prov, *measurements, *summaries, *transport_rows, *target_rows])
            md = report.markdown(prov, summaries, wl | _paced_workloads(wl), target_rows, transport_rows,
                                 _rel(jsonl))
            (out_dir / "latest.md").write_text(md)
            report.chart(out_dir / "throughput.png", [s for s in summaries if not s["workload"].startswith("paced")],
                         wl)
            progress.note(f"wrote {_rel(jsonl)}, {_rel(out_dir / 'latest.md')}, {_rel(out_dir / 'throughput.png')} "
                          f"in {time.perf_counter() - t_start:.0f}s")
    if failed or any(not m["verified"] for m in measurements):
        progress.note("FAILED: at least one measurement lost, duplicated or failed jobs (see problems in the JSONL)")
        return 2
    return 0


def _paced_workloads(wl: dict[str, Workload]) -> dict[str, Workload]:
    w = wl["noop"]
    return {"paced_noop": Workload("paced_noop", w.func, 0.0, False, None,
                                   "no-op enqueued one by one at half the contender's measured no-op rate "
                                   "(latency at half capacity)")}


def run_paced(bench: Bench, wl: dict[str, Workload], measurements: list[dict[str, Any]], args: argparse.Namespace,
              progress: Progress, failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    have = asyncjobs_available()
    for cn in PACED:
        c = Contender.parse(cn)
        if c.kind == "asyncjobs" and not have:
            continue
        rates = [m["jobs_per_s"] for m in measurements if m["workload"] == "noop" and m["contender"] == cn
                 and m["jobs_per_s"]]
        if not rates:
            continue
        rate = sorted(rates)[len(rates) // 2] / 2
        n = args.n or int(max(args.n_min, min(args.n_max, rate * max(args.seconds, 2.0))))
        progress.label = f"[paced] noop {c.name:<18} {rate:,.0f} jobs/s n={n}"
        rec = bench.measure(wl["noop"], c, n, 0, pace_rate=rate)
        progress.done(f"start p99 {rec['latency_start_ms']['p99']} ms  "
                      f"{'ok' if rec['verified'] else 'FAILED: ' + '; '.join(rec['problems'])}")
        out.append(rec)
        if not rec["verified"]:
            failed.append(rec)
            if not args.keep_going:
                raise VerificationError(f"paced {c.name}: " + "; ".join(rec["problems"]))
    return out


def run_transport(bench: Bench, args: argparse.Namespace, progress: Progress) -> list[dict[str, Any]]:
    from benchmarks.transport import VARIANTS, measure
    from tests.testsupport.sinks import SinkProcess

    n = args.n if args.n else (300 if args.quick else 3000)
    rows = []
    with SinkProcess("http", 0.0) as sink:
        for v in VARIANTS:
            progress.label = f"[transport] {v:<14} n={n} c=50"
            progress.update("...")
            row = measure(f"http://127.0.0.1:{sink.port}", v, n, 50, args.loop)
            progress.done(f"{row['req_per_s']:,.0f} req/s  {row['cpu_ms_per_request']:.3f} CPU ms/request")
            rows.append(row)
    return rows


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------- capacity planning


def cmd_plan(args: argparse.Namespace) -> int:
    latency_s = args.latency_ms / 1000.0
    wl = workloads(smtp_delay_ms=args.latency_ms, sms_delay_ms=args.latency_ms, sleep_s=latency_s)
    w = wl[args.workload]
    progress = Progress(not args.no_progress)
    if not asyncjobs_available():
        raise SystemExit("asyncjobs-worker is not runnable (`asyncjobs-worker --help` failed): install the package")
    concs = [int(x) for x in _csv(args.concurrency_list)]
    rows: list[dict[str, Any]] = []
    with Bench(smtp_delay_ms=args.latency_ms, sms_delay_ms=args.latency_ms, sleep_s=latency_s, loop=args.loop,
               timeout_s=args.timeout, progress=progress, redis_binary=args.redis_server) as bench:
        best = 0.0
        for conc in concs:
            c = Contender.parse(f"asyncjobs-c{conc}")
            n = int(max(100, min(args.n_max, min(conc / latency_s, 4000) * args.seconds)))
            progress.label = f"[sweep] {w.name} {c.name:<16} n={n}"
            rec = bench.measure(w, c, n)
            progress.done(f"{rec['jobs_per_s'] or 0:,.1f} jobs/s  rss {rec['peak_rss_mb']:.0f} MB")
            if not rec["verified"]:
                progress.note("FAILED exactly-once verification: " + "; ".join(rec["problems"]))
                return 2
            rows.append(rec)
            rate = rec["jobs_per_s"] or 0.0
            if best and rate < best * 1.10 and conc >= 2 * rows[-2]["concurrency"]:
                progress.note(f"throughput stopped growing at --concurrency {conc} (< +10% for 2x concurrency)")
                break
            best = max(best, rate)
        stock = Contender.parse("rq-simple")
        n_stock = int(max(30, min(1000, 1 / (latency_s + 0.002) * args.seconds)))
        progress.label = f"[stock] {w.name} rq-simple n={n_stock}"
        srec = bench.measure(w, stock, n_stock)
        progress.done(f"{srec['jobs_per_s'] or 0:,.1f} jobs/s  rss {srec['peak_rss_mb']:.0f} MB")
        if not srec["verified"]:
            progress.note("FAILED exactly-once verification: " + "; ".join(srec["problems"]))
            return 2
    peak = max(rows, key=lambda r: r["jobs_per_s"] or 0)
    good = [r for r in rows if (r["jobs_per_s"] or 0) >= 0.9 * (peak["jobs_per_s"] or 0)]
    rec_row = min(good, key=lambda r: r["concurrency"])
    per_proc = rec_row["jobs_per_s"] * args.headroom
    procs = max(1, math.ceil(args.rate / per_proc))
    # the smallest measured concurrency that carries this process's share of the rate with headroom,
    # but never below Little's law (rate x latency) with 50% slack
    share = args.rate / procs
    fits = [r for r in rows if (r["jobs_per_s"] or 0) * args.headroom >= share]
    little = math.ceil(share * latency_s * 1.5)
    conc = max(little, min(r["concurrency"] for r in fits)) if fits else max(little, rec_row["concurrency"])
    s_rate = (srec["jobs_per_s"] or 0) * args.headroom
    s_procs = math.ceil(args.rate / s_rate) if s_rate else None
    result = {
        "type": "plan", "target_rate": args.rate, "latency_ms": args.latency_ms, "workload": w.name,
        "headroom": args.headroom, "sweep": [{"concurrency": r["concurrency"], "jobs_per_s": r["jobs_per_s"],
                                               "peak_rss_mb": r["peak_rss_mb"], "cpu_s_per_1k": r["cpu_s_per_1k"]}
                                              for r in rows],
        "knee_concurrency": rec_row["concurrency"], "per_process_jobs_per_s": rec_row["jobs_per_s"],
        "recommended_concurrency": conc, "recommended_processes": procs,
        "memory_mb": round(procs * rec_row["peak_rss_mb"], 1),
        "cores_needed_estimate": round(args.rate * rec_row["cpu_s_per_1k"] / 1000, 2),
        "stock_simpleworker_jobs_per_s": srec["jobs_per_s"], "stock_simpleworker_rss_mb": srec["peak_rss_mb"],
        "stock_processes": s_procs,
        "stock_memory_mb": round(s_procs * srec["peak_rss_mb"], 1) if s_procs else None,
    }
    print(format_plan(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def format_plan(p: dict[str, Any]) -> str:
    lines = [
        f"Capacity plan: {p['target_rate']:g} jobs/s of '{p['workload']}' at {p['latency_ms']:g} ms per delivery "
        f"(planning at {p['headroom']:.0%} of measured capacity)",
        "",
        "  concurrency  jobs/s   RSS MB  CPU s/1k",
    ]
    for r in p["sweep"]:
        lines.append(f"  {r['concurrency']:>11}  {r['jobs_per_s'] or 0:>7,.0f}  {r['peak_rss_mb']:>6.0f}  "
                     f"{r['cpu_s_per_1k']:>8.2f}")
    lines += [
        "",
        f"throughput stops growing near --concurrency {p['knee_concurrency']} "
        f"({p['per_process_jobs_per_s']:,.0f} jobs/s per process on this machine)",
        f"asyncjobs:  asyncjobs-worker --concurrency {p['recommended_concurrency']} "
        f"--processes {p['recommended_processes']}  -> ~{p['memory_mb']:,.0f} MB RSS, "
        f"~{p['cores_needed_estimate']:.2f} CPU cores of worker time",
        f"stock RQ:   {p['stock_processes']} SimpleWorker processes "
        f"({p['stock_simpleworker_jobs_per_s']:,.1f} jobs/s each) -> ~{p['stock_memory_mb'] or 0:,.0f} MB RSS",
    ]
    if p["recommended_processes"] > 1:
        lines.append("  (more processes than cores: spread them over machines; Redis needs a core too)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="asyncjobs benchmarks")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure contenders side by side, verify exactly-once, write results")
    r.add_argument("--workloads", help=f"comma-separated subset of {','.join(DEFAULT_MATRIX)}")
    r.add_argument("--contenders", help="comma-separated contenders for every selected workload, e.g. "
                   "rq-fork,rq-simple,rq-simple-x8,asyncjobs-c50,asyncjobs-c50-p2,saq-c50,ceiling-c50 "
                   "(default: a per-workload matrix)")
    r.add_argument("-n", type=int, default=None, help="jobs per measurement (default: sized by --seconds)")
    r.add_argument("--seconds", type=float, default=1.5,
                   help="target duration of one measurement, sizes N (default 1.5)")
    r.add_argument("--n-min", type=int, default=30)
    r.add_argument("--n-max", type=int, default=20000)
    r.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; --quick: 1)")
    r.add_argument("--quick", action="store_true", help="one repetition, ~1 s per measurement")
    r.add_argument("--out", default="benchmarks/results")
    r.add_argument("--smtp-delay-ms", type=float, default=20.0)
    r.add_argument("--sms-delay-ms", type=float, default=30.0)
    r.add_argument("--sms-transport", choices=["aiohttp", "httpx"], default="aiohttp")
    r.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    r.add_argument("--timeout", type=float, default=300.0, help="per-measurement limit in seconds")
    r.add_argument("--redis-server", default=None, help="redis-server binary (default: newest found)")
    r.add_argument("--keep-going", action="store_true", help="continue after a failed verification")
    r.add_argument("--no-saq", action="store_true")
    r.add_argument("--no-paced", action="store_true", help="skip the latency-at-half-capacity runs")
    r.add_argument("--no-transport", action="store_true", help="skip the SMS transport comparison")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_run)
    pl = sub.add_parser("plan", help="capacity planning: sweep --concurrency, recommend a deployment")
    pl.add_argument("--rate", type=float, required=True, help="target jobs (deliveries) per second")
    pl.add_argument("--latency-ms", type=float, required=True, help="per-delivery latency of the remote side")
    pl.add_argument("--workload", choices=["sleep_async", "smtp", "sms"], default="sleep_async",
                    help="sleep_async: stated latency; smtp/sms: the project's tasks against a sink with that delay")
    pl.add_argument("--concurrency-list", default="10,25,50,100,200,400,800")
    pl.add_argument("--headroom", type=float, default=0.7, help="plan at this fraction of capacity (default 0.7)")
    pl.add_argument("--seconds", type=float, default=2.0)
    pl.add_argument("--n-max", type=int, default=20000)
    pl.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    pl.add_argument("--timeout", type=float, default=300.0)
    pl.add_argument("--redis-server", default=None, help="redis-server binary (default: newest found)")
    pl.add_argument("--out", default="benchmarks/results")
    pl.add_argument("--no-progress", action="store_true")
    pl.set_defaults(func=cmd_plan)
    op = sub.add_parser("ops", help="overhead of --metrics-port/--health-port on the happy path (stock RQ beside)")
    op.add_argument("--workloads", default=OPS_WORKLOADS)
    op.add_argument("--concurrency", type=int, default=50)
    op.add_argument("--repeat", type=int, default=5)
    op.add_argument("--seconds", type=float, default=2.0)
    op.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    op.add_argument("--out", default="benchmarks/results/ops")
    op.add_argument("--no-progress", action="store_true")
    op.set_defaults(func=cmd_ops)

    px = sub.add_parser("prefixes", help="RQ 3 on a Redis Cluster: one key prefix against two (needs RQ 3)")
    px.add_argument("-n", type=int, default=20000, help="jobs per run (default %(default)s)")
    px.add_argument("--repeat", type=int, default=3)
    px.add_argument("--concurrency", type=int, default=50)
    px.add_argument("--out", default="benchmarks/results")
    px.set_defaults(func=cmd_prefixes)

    lm = sub.add_parser("limits", help="queue limits: cost of the checks, measured rate, a queue beside a limited one")
    lm.add_argument("-n", type=int, default=5000, help="no-op jobs per throughput run (default %(default)s)")
    lm.add_argument("--rate", type=int, default=50, help="the rate limit measured, starts/s (default %(default)s)")
    lm.add_argument("--windows", type=int, default=8, help="rate run: jobs = windows x rate (default %(default)s)")
    lm.add_argument("--repeat", type=int, default=3)
    lm.add_argument("--concurrency", type=int, default=50)
    lm.add_argument("--out", default="benchmarks/results")
    lm.set_defaults(func=cmd_limits)

    cm = sub.add_parser("commands", help="Redis commands per no-op job, by command (stock RQ beside)")
    cm.add_argument("-n", type=int, default=2000, help="no-op jobs per asyncjobs run (default %(default)s)")
    cm.add_argument("--n-stock", type=int, default=500, help="jobs for the stock worker (default %(default)s)")
    cm.add_argument("--concurrency", type=int, default=50)
    _side_by_side(cm, "benchmarks/results/commands")
    cm.set_defaults(func=cmd_commands)

    gp = sub.add_parser("gap", help="where a slot's time goes: job end to next start, 50 ms jobs (stock RQ beside)")
    gp.add_argument("-n", type=int, default=3000, help="jobs per asyncjobs run (default %(default)s)")
    gp.add_argument("--n-stock", type=int, default=60, help="jobs for the stock worker (default %(default)s)")
    gp.add_argument("--seconds", type=float, default=0.05, help="each job's sleep (default %(default)s)")
    gp.add_argument("--concurrency", type=int, default=50)
    gp.add_argument("--repeat", type=int, default=2)
    gp.add_argument("--batches", type=lambda text: [int(b) for b in _csv(text)], default=[],
                    help="also run this checkout at these --claim-batch values, e.g. 4,16")
    gp.add_argument("--prefetches", type=lambda text: [int(f) for f in _csv(text)], default=[],
                    help="also run this checkout at these --prefetch values, e.g. 0,8")
    _side_by_side(gp, "benchmarks/results/gap")
    gp.set_defaults(func=cmd_gap)

    fi = sub.add_parser("fanin", help="a child of N parents: the longest Redis stall its checks cause (stock RQ beside)")
    fi.add_argument("-n", type=int, default=3000, help="parents (default %(default)s)")
    fi.add_argument("--n-stock", type=int, default=1000, help="parents for the stock worker (default %(default)s)")
    _side_by_side(fi, "benchmarks/results/fanin")
    fi.set_defaults(func=cmd_fanin)

    pf = sub.add_parser("profile", help="worker CPU per no-op job, and a cProfile of one run")
    pf.add_argument("-n", type=int, default=20000, help="no-op jobs per run (default %(default)s)")
    pf.add_argument("--workload", choices=["noop", "noop_async"], default="noop_async")
    pf.add_argument("--concurrency", type=int, default=50)
    pf.add_argument("--repeat", type=int, default=3, help="unprofiled runs; the smallest CPU counts")
    pf.add_argument("--timeout", type=float, default=300.0,
                    help="seconds one worker run may take before it is killed and the run fails (default %(default)g)")
    pf.add_argument("--top", type=int, default=30, help="functions listed (default %(default)s)")
    pf.add_argument("--source", default=None, help="run the asyncjobs package as of this git revision")
    pf.add_argument("--before", default=None, help="also run this git revision, interleaved (before/after)")
    pf.add_argument("--out", default="benchmarks/results/profile")
    pf.add_argument("--keep", default=None, help="save the cProfile data (pstats) to this file")
    pf.set_defaults(func=cmd_profile)

    sc = sub.add_parser("scale", help="how cost grows with queues, backlog, concurrency and worker processes")
    sc.add_argument("-n", type=int, default=10000, help="jobs per measurement (default %(default)s)")
    sc.add_argument("--dimensions", default="queues,backlog,concurrency,workers")
    sc.add_argument("--queue-counts", default="1,10,100,1000")
    sc.add_argument("--backlogs", default="10000,100000", help="e.g. 10000,100000,1000000")
    sc.add_argument("--concurrencies", default="10,50,200,1000")
    sc.add_argument("--processes", default="1,2,4")
    sc.add_argument("--quick", action="store_true", help="two points per dimension, small N")
    sc.add_argument("--timeout", type=float, default=900.0, help="per-measurement limit in seconds")
    sc.add_argument("--redis-server", default=None, help="redis-server binary (default: newest found)")
    sc.add_argument("--out", default="benchmarks/results/scale")
    sc.add_argument("--before", default=None, metavar="REF",
                    help="also measure each point with asyncjobs as of git revision REF")
    sc.add_argument("--stock", action="store_true",
                    help="also measure stock RQ SimpleWorkers where the point applies (queues, workers)")
    sc.add_argument("--stock-n", type=int, default=1500, help="jobs per stock measurement (default 1500)")
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(func=cmd_scale)

    ls = sub.add_parser("list", help="list workloads and the default contender matrix")
    ls.set_defaults(func=cmd_list)
    return p


def cmd_scale(args: argparse.Namespace) -> int:
    from benchmarks import scale

    return scale.main(args)


def cmd_profile(args: argparse.Namespace) -> int:
    from benchmarks import profile

    return profile.main(args)


def _side_by_side(p: argparse.ArgumentParser, out: str) -> None:
    """The options of the measurements that run stock RQ, an earlier revision and this one side by side."""
    p.add_argument("--before", default=None, help="also run the asyncjobs package as of this git revision")
    p.add_argument("--redis-server", default=None, help="redis-server binary (default: newest found)")
    p.add_argument("--out", default=out)
    p.add_argument("--no-progress", action="store_true")


def cmd_gap(args: argparse.Namespace) -> int:
    from benchmarks import gap

    return gap.main(args)


def cmd_fanin(args: argparse.Namespace) -> int:
    from benchmarks import fanin

    return fanin.main(args)


def cmd_commands(args: argparse.Namespace) -> int:
    from benchmarks import commands

    return commands.main(args)


def cmd_limits(args: argparse.Namespace) -> int:
    from benchmarks import limits

    return limits.main(args)


def cmd_prefixes(args: argparse.Namespace) -> int:
    from benchmarks import prefixes

    return prefixes.main(args)


OPS_WORKLOADS = "noop,noop_async,smtp"


def ops_contenders(concurrency: int) -> list[str]:
    base = [f"asyncjobs-c{concurrency}", f"asyncjobs-c{concurrency}-p2"]
    return ["rq-simple", *(x for b in base for x in (b, f"{b}-ops"))]


def cmd_ops(args: argparse.Namespace) -> int:
    """The happy path with and without --metrics-port/--health-port, in one run, stock RQ beside."""
    out = Path(args.out)
    run_args = build_parser().parse_args([
        "run", "--workloads", args.workloads, "--contenders", ",".join(ops_contenders(args.concurrency)),
        "--repeat", str(args.repeat), "--seconds", str(args.seconds), "--out", str(out),
        "--no-saq", "--no-paced", "--no-transport", "--loop", args.loop,
        *(["--no-progress"] if args.no_progress else []),
    ])
    rc = cmd_run(run_args)
    if not out.is_absolute():
        out = Path.cwd() / out
    newest = max(out.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    rows = [json.loads(line) for line in newest.read_text().splitlines() if line.strip()]
    costs = {m: observer_cost(m) for m in ("off", "single", "mp")}
    text = format_ops(rows, _rel(newest), costs)
    (out / "ops-latest.md").write_text(text)
    print(text)
    return rc


def observer_cost(mode: str) -> float:
    """Per-job CPU microseconds of the worker's metrics calls, measured in a fresh process."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "benchmarks.runners", "observer-cost", "--mode", mode],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["us_per_job"])


def format_ops(rows: list[dict[str, Any]], source: str, costs: dict[str, float] | None = None) -> str:
    prov = next(r for r in rows if r["type"] == "provenance")
    by = {(r["workload"], r["contender"]): r for r in rows if r["type"] == "summary"}
    lines = [
        "## Overhead of --metrics-port and --health-port",
        "",
        f"{prov.get('date', '')}, {prov.get('cpu_count', '?')} CPUs ({prov.get('cpu_model', '?')}), "
        f"Python {prov.get('python', '?')}, commit {str(prov.get('git_commit', '?'))[:10]}; source `{source}`. "
        "`-ops` = the same worker with both ports, scraped (/metrics, /livez, /readyz) once a second.",
        "",
        "| workload | contender | jobs/s | vs without | CPU s/1k | vs without | start p50 ms | RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(a: float | None, b: float | None) -> str:
        return f"{(a / b - 1) * 100:+.1f}%" if a and b else "-"

    for (wl, cn), s in by.items():
        base = by.get((wl, cn.removesuffix("-ops"))) if cn.endswith("-ops") else None
        lines.append(
            f"| {wl} | {cn} | {s['jobs_per_s_median'] or 0:,.0f} | "
            f"{pct(s['jobs_per_s_median'], base['jobs_per_s_median']) if base else ''} | "
            f"{s['cpu_s_per_1k'] or 0:.3f} | {pct(s['cpu_s_per_1k'], base['cpu_s_per_1k']) if base else ''} | "
            f"{(s['latency_start_ms'] or {}).get('p50') or 0:,.1f} | {s['peak_rss_mb'] or 0:.0f} |"
        )
    if costs:
        noop_cpu = {cn: s["cpu_s_per_1k"] for (wl, cn), s in by.items() if wl == "noop" and s["cpu_s_per_1k"]}
        single = costs["single"] - costs["off"]
        mp = costs["mp"] - costs["off"]
        lines += [
            "",
            f"Per-job CPU of the metrics calls themselves (best of 5 x 100,000 in a fresh process): "
            f"{single:.1f} us in one process, {mp:.1f} us in multiprocess mode (`--processes`), "
            f"against a whole no-op job's {1000 * noop_cpu.get('asyncjobs-c50', 0):.0f} us / "
            f"{1000 * noop_cpu.get('asyncjobs-c50-p2', 0):.0f} us of worker CPU above: "
            + (f"{single / (1000 * noop_cpu['asyncjobs-c50']) * 100:.1f}% / "
               f"{mp / (1000 * noop_cpu['asyncjobs-c50-p2']) * 100:.1f}% of the cheapest possible job."
               if noop_cpu.get("asyncjobs-c50") and noop_cpu.get("asyncjobs-c50-p2") else ""),
        ]
    spreads = [s["spread_pct"] for s in by.values() if s.get("spread_pct") is not None]
    if spreads:
        lines.append(f"\nSpread of jobs/s across repetitions: median {sorted(spreads)[len(spreads) // 2]:.0f}% "
                     "(a differing row within that spread is noise, not overhead).")
    return "\n".join(lines) + "\n"


def cmd_list(args: argparse.Namespace) -> int:
    for name, w in workloads().items():
        print(f"{name:<12} {w.description}\n{'':<12} contenders: {', '.join(DEFAULT_MATRIX[name])}")
    print(f"paced_noop   latency at half capacity for: {', '.join(PACED)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
