"""Worker CPU per no-op job, and where it goes: ``python -m benchmarks profile [-n 20000]``.

A private redis-server; each run enqueues N no-op jobs with stock RQ and drains them with
``asyncjobs-worker --burst --concurrency C`` in a child process.  The CPU figure is the child's own
user + system time (``os.wait4``; threads included, start-up included) divided by N, the smallest of
``--repeat`` runs (the least disturbed by the other processes of a shared machine).  Then one more
run under ``cProfile`` (the event loop's thread: use ``--workload noop_async`` to see a job's whole
path there) gives the top functions by own time.  ``--source REF`` runs the asyncjobs package as of
git revision REF instead (before/after in one sitting).  Every run checks that N jobs finished.

Writes ``benchmarks/results/profile/profile-<workload>-latest.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from tests.testsupport.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "bench"


def _enqueue(conn: redis.Redis, func: str, n: int) -> None:
    q = Queue(QUEUE, connection=conn)
    for i in range(0, n, 1000):
        with conn.pipeline() as pipe:
            q.enqueue_many([Queue.prepare_data(func, (f"p-{j}",), job_id=f"p-{j}")
                            for j in range(i, min(i + 1000, n))], pipeline=pipe)
            pipe.execute()


def _package_at(ref: str, tmp: Path) -> Path:
    dest = tmp / "src"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "asyncjobs"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _run(url: str, args: argparse.Namespace, env: dict[str, str], profile_to: Path | None) -> float:
    """Drain the queue once; returns the child's CPU seconds (user + system)."""
    prefix = [sys.executable]
    if profile_to is not None:
        prefix += ["-m", "cProfile", "-o", str(profile_to)]
    argv = [*prefix, "-m", "asyncjobs", "--burst", "--concurrency", str(args.concurrency), "-u", url,
            "-l", "WARNING", "-P", str(ROOT), QUEUE]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"worker exited with {proc.returncode}:\n{err[-3000:]}")
    return usage.ru_utime + usage.ru_stime


def main(args: argparse.Namespace) -> int:
    func = f"benchmarks.jobs.{args.workload}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = RedisServer()
    server.start()
    with contextlib.closing(server), tempfile.TemporaryDirectory(prefix="asyncjobs-profile-") as tmpdir:
        tmp = Path(tmpdir)
        env = dict(os.environ, BENCH_LEDGER="", PYTHONUNBUFFERED="1")
        source = [str(_package_at(args.source, tmp))] if args.source else []
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*source, str(ROOT), env.get("PYTHONPATH", "")]))
        conn = redis.Redis.from_url(server.url)
        cpu: list[float] = []
        prof = tmp / "worker.prof"
        for rep in range(args.repeat + 1):
            conn.flushdb()
            _enqueue(conn, func, args.n)
            profiled = rep == args.repeat
            t0 = time.perf_counter()
            seconds = _run(server.url, args, env, prof if profiled else None)
            wall = time.perf_counter() - t0
            done = FinishedJobRegistry(QUEUE, connection=conn).count
            if done != args.n:
                raise SystemExit(f"{done} of {args.n} jobs finished: the run is not valid")
            label = "profiled" if profiled else f"rep {rep + 1}"
            print(f"{label}: {seconds / args.n * 1000:.3f} CPU ms/job ({wall:.1f} s wall)", file=sys.stderr)
            if not profiled:
                cpu.append(seconds)
        conn.close()
        text = io.StringIO()
        stats = pstats.Stats(str(prof), stream=text)
        stats.sort_stats("tottime").print_stats(args.top)
        if args.keep:
            Path(args.keep).write_bytes(prof.read_bytes())
    best = min(cpu) / args.n * 1000
    body = text.getvalue()
    body = body[body.index("   ncalls"):] if "   ncalls" in body else body
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = (
        f"## Worker CPU per job: {args.workload}, n={args.n}, --concurrency {args.concurrency}"
        f"{', asyncjobs@' + args.source if args.source else ''} ({stamp})\n\n"
        f"CPU ms/job (user+system of the worker process, start-up included), best of {args.repeat}: "
        f"**{best:.3f}** (all: {', '.join(f'{c / args.n * 1000:.3f}' for c in cpu)})\n\n"
        f"cProfile, top {args.top} by own time (event-loop thread; profiling slows it down):\n\n"
        f"```\n{body.rstrip()}\n```\n"
    )
    name = f"profile-{args.workload}{'-' + args.source if args.source else ''}-latest.md"
    (out / name.replace("/", "_")).write_text(report)
    print(report)
    return 0
