"""Queue limits (issue 20): ``python -m benchmarks limits [-n 5000] [--rate 50] [--repeat 3]``.

A private redis-server; each run enqueues no-op jobs with stock RQ (``enqueue_many``) and runs real
``asyncjobs-worker`` processes.  Times come from the jobs' own ``started_at``/``ended_at`` (start-up
is left out).  Four set-ups:

* ``no limits``: ``-c 50 --burst`` over ``N`` no-op jobs on ``bench``; the limits hash does not exist;
* ``limits checked``: the same with a concurrency and a rate on ``bench`` set so high they never bind,
  so every claim runs the checks (the cost of the limit checks on the no-op path);
* ``rate``: ``--rate R/s`` on ``limited``, ``--windows`` (8) times ``R`` jobs, two workers of ``-c 20``: the measured starts
  per second after the first window, and the most starts seen in any one-second window;
* ``beside a rate-limited queue``: ``--queues limited,bench`` (the limited queue first, at ``10/s``,
  with more jobs than run meanwhile) and ``N`` jobs on ``bench``: ``bench``'s throughput, to compare
  with ``no limits`` (a job never holds a slot while its queue's limit waits).

Every run verifies that each expected job finished once (its queue's FinishedJobRegistry).  Redis
commands per job come from ``INFO commandstats`` (reset before each run).  Results:
``benchmarks/results/limits/limits-latest.md``, a ``.jsonl`` beside it and ``limits.png``.
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

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from asyncjobs.limits import QueueControl
from asyncjobs.protocol.timeutil import parse_utc
from tests.testsupport.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("no limits", "limits checked", "rate", "beside a rate-limited queue")


def _enqueue(conn: redis.Redis, queue: str, n: int, tag: str) -> None:
    q = Queue(queue, connection=conn)
    for i in range(0, n, 1000):
        q.enqueue_many([Queue.prepare_data("benchmarks.jobs.noop", (f"{tag}-{j}",), job_id=f"{tag}-{j}",
                                           result_ttl=3600) for j in range(i, min(i + 1000, n))])


def _worker(url: str, queues: str, concurrency: int, *extra: str) -> subprocess.Popen[str]:
    argv = [str(Path(sys.executable).with_name("asyncjobs-worker")), "-u", url, "--logging-level", "WARNING",
            "-c", str(concurrency), *extra, "--queues", queues]
    return subprocess.Popen(argv, cwd=str(ROOT), env=dict(os.environ, BENCH_LEDGER=""),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _times(conn: redis.Redis, queue: str) -> list[tuple[float, float]]:
    ids = FinishedJobRegistry(queue, connection=conn).get_job_ids()
    pipe = conn.pipeline(transaction=False)
    for jid in ids:
        pipe.hmget(f"rq:job:{jid}", "started_at", "ended_at")
    out = []
    for started, ended in pipe.execute():
        if started and ended:
            out.append((parse_utc(started.decode()).timestamp(), parse_utc(ended.decode()).timestamp()))
    return sorted(out)


def _cmds(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


def _wait(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err[-2000:]


def run_noop(url: str, n: int, concurrency: int, checked: bool, rep: int) -> dict[str, Any]:
    conn = redis.Redis.from_url(url)
    conn.flushall()
    if checked:
        QueueControl(conn).limit("bench", concurrency=1_000_000, rate=f"{1_000_000}/s")
    _enqueue(conn, "bench", n, f"n{rep}")
    conn.config_resetstat()
    proc = _worker(url, "bench", concurrency, "--burst")
    err = _wait(proc)
    total = _cmds(conn)
    times = _times(conn, "bench")
    ok = proc.returncode == 0 and len(times) == n and Queue("bench", connection=conn).count == 0
    span = times[-1][1] - times[0][0] if times else float("nan")
    conn.close()
    return {"setup": "limits checked" if checked else "no limits", "rep": rep, "jobs": n,
            "jobs_per_s": round(n / span, 1), "redis_cmds_per_job": round(total / n, 2), "verified": ok, "stderr_tail": "" if ok else err}


def run_rate(url: str, rate: int, rep: int, windows: int = 8) -> dict[str, Any]:
    conn = redis.Redis.from_url(url)
    conn.flushall()
    QueueControl(conn).limit("limited", rate=f"{rate}/s")
    m = windows * rate
    _enqueue(conn, "limited", m, f"r{rep}")
    procs = [_worker(url, "limited", 20, "--burst") for _ in range(2)]
    errs = [_wait(p) for p in procs]
    starts = [s for s, _ in _times(conn, "limited")]
    ok = all(p.returncode == 0 for p in procs) and len(starts) == m
    # After the first window's burst the starts go at the rate: (m - rate) starts over the rest.
    steady = (m - rate) / (starts[-1] - starts[rate - 1]) if ok and starts[-1] > starts[rate - 1] else float("nan")
    # Starts are stamped by the worker just before its claim reaches Redis (whose clock the limit uses),
    # so windows of 0.9 s leave room for that delay.
    peak = max(sum(1 for u in starts if t <= u < t + 0.9) for t in starts) if starts else 0
    conn.close()
    return {"setup": "rate", "rep": rep, "jobs": m, "configured_per_s": rate, "measured_per_s": round(steady, 2),
            "max_in_any_0_9s": peak, "verified": ok, "stderr_tail": "" if ok else "\n".join(errs)}


def run_beside(url: str, n: int, concurrency: int, rep: int) -> dict[str, Any]:
    conn = redis.Redis.from_url(url)
    conn.flushall()
    QueueControl(conn).limit("limited", rate="10/s")
    _enqueue(conn, "limited", 1000, f"l{rep}")
    _enqueue(conn, "bench", n, f"b{rep}")
    proc = _worker(url, "limited,bench", concurrency)
    deadline = time.monotonic() + 600
    finished = FinishedJobRegistry("bench", connection=conn)
    while finished.count < n and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.terminate()  # our own child, by its PID
    err = _wait(proc, 60)
    times = _times(conn, "bench")
    limited_done = FinishedJobRegistry("limited", connection=conn).count
    ok = len(times) == n and Queue("bench", connection=conn).count == 0
    span = times[-1][1] - times[0][0] if times else float("nan")
    conn.close()
    return {"setup": "beside a rate-limited queue", "rep": rep, "jobs": n, "jobs_per_s": round(n / span, 1),
            "limited_jobs_run_meanwhile": limited_done, "verified": ok, "stderr_tail": "" if ok else err}


def _median(rows: list[dict[str, Any]], setup: str, key: str) -> float:
    values = [r[key] for r in rows if r["setup"] == setup]
    return statistics.median(values) if values else float("nan")


def _chart(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = ["no limits", "limits checked", "beside a\nrate-limited queue"]
    values = [_median(rows, s, "jobs_per_s") for s in ("no limits", "limits checked", "beside a rate-limited queue")]
    left.bar(labels, values, color=["#4c72b0", "#55a868", "#c44e52"], alpha=0.8)
    for x, setup in enumerate(("no limits", "limits checked", "beside a rate-limited queue")):
        runs = [r["jobs_per_s"] for r in rows if r["setup"] == setup]
        left.scatter([x] * len(runs), runs, color="black", s=12, zorder=3)  # each run: the spread
    left.set_ylabel("no-op jobs/s on `bench` (bar: median, dots: runs)")
    left.set_title("throughput of an unlimited queue")
    rate_rows = [r for r in rows if r["setup"] == "rate"]
    if rate_rows:
        configured = rate_rows[0]["configured_per_s"]
        right.bar(["configured", "measured (median)"], [configured, _median(rows, "rate", "measured_per_s")],
                  color=["#8172b2", "#937860"])
        right.set_ylabel("job starts/s")
        right.set_title(f"rate {configured}/s shared by two workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: Any) -> int:
    out_dir = Path(args.out) / "limits"
    out_dir.mkdir(parents=True, exist_ok=True)
    server = RedisServer()
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeat):
            order = (False, True) if rep % 2 == 0 else (True, False)  # interleaved: no order bias
            for row in (*(run_noop(server.url, args.n, args.concurrency, checked, rep) for checked in order),
                        run_rate(server.url, args.rate, rep, args.windows),
                        run_beside(server.url, args.n, args.concurrency, rep)):
                rows.append(row)
                shown = {k: v for k, v in row.items() if k not in ("setup", "rep", "stderr_tail")}
                print(f"{row['setup']:<28} rep {rep + 1}: {json.dumps(shown)}", file=sys.stderr)
                if not row["verified"]:
                    print(row["stderr_tail"], file=sys.stderr)
                    return 2
    finally:
        server.stop()
    import platform

    import rq

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    prov = {"date": stamp, "python": platform.python_version(), "rq": rq.__version__, "cpus": os.cpu_count(),
            "n": args.n, "rate": args.rate, "windows": args.windows, "concurrency": args.concurrency,
            "repeat": args.repeat,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), capture_output=True,
                                     text=True, check=False).stdout.strip()}
    with (out_dir / f"limits-{stamp}.jsonl").open("w") as fh:
        fh.write(json.dumps({"provenance": prov}) + "\n")
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    write_report(out_dir, prov, rows)
    return 0


def _runs(rows: list[dict[str, Any]], setup: str) -> str:
    return ", ".join(f"{r['jobs_per_s']:,.0f}" for r in rows if r["setup"] == setup)


def write_report(out_dir: Path, prov: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``limits-latest.md`` and ``limits.png`` from the runs (also to redo them from a ``.jsonl``)."""
    n, rate, windows = prov["n"], prov["rate"], prov.get("windows", 8)
    base = _median(rows, "no limits", "jobs_per_s")
    checked = _median(rows, "limits checked", "jobs_per_s")
    beside = _median(rows, "beside a rate-limited queue", "jobs_per_s")
    lines = [
        "# Queue limits",
        "",
        f"`python -m benchmarks limits -n {n} --rate {rate} --repeat {prov['repeat']}` on {prov['cpus']} "
        f"CPUs, Python {prov['python']}, RQ {prov['rq']}, commit {prov['commit']}, {prov['date']}; "
        f"`asyncjobs-worker -c {prov['concurrency']}`, no-op jobs; medians of {prov['repeat']} runs.",
        "",
        "| set-up | jobs/s on `bench` (median) | runs | vs no limits | Redis commands per job |",
        "|---|---|---|---|---|",
        f"| no limits | {base:,.0f} | {_runs(rows, 'no limits')} | - | "
        f"{_median(rows, 'no limits', 'redis_cmds_per_job'):.2f} |",
        f"| limits checked (concurrency and rate set, never binding) | {checked:,.0f} | "
        f"{_runs(rows, 'limits checked')} | {100 * (checked / base - 1):+.1f}% | "
        f"{_median(rows, 'limits checked', 'redis_cmds_per_job'):.2f} |",
        f"| beside `limited` at 10/s (listed first) | {beside:,.0f} | {_runs(rows, 'beside a rate-limited queue')} | "
        f"{100 * (beside / base - 1):+.1f}% | - |",
        "",
        f"Rate `{rate}/s` on one queue, two workers of `-c 20`, {windows * rate} jobs: measured "
        f"{_median(rows, 'rate', 'measured_per_s'):.2f} starts/s after the first window; at most "
        f"{max(r['max_in_any_0_9s'] for r in rows if r['setup'] == 'rate')} starts in any 0.9 s window "
        "of the jobs' `started_at`, which each worker stamps from its own clock just before its claim reaches "
        "Redis (the limit is timed by Redis's clock: a claim delayed on a loaded machine shows up as an "
        "excess here; the chaos scenario `queuelimits` checks the limit from Redis itself).",
        "",
        "The machine is shared (2 CPUs, several agents at once): the throughput of one set-up varies between "
        "runs by more than the differences between set-ups; Redis commands per job is the stable measure.",
        "",
        "With no limit on a worker's queues a claim reads nothing of the limits (the worker reads which "
        "queues have limits once a second), so the no-limits row is the engine without limits.",
    ]
    (out_dir / "limits-latest.md").write_text("\n".join(lines) + "\n")
    _chart(out_dir / "limits.png", rows)
    print("\n".join(lines))
