"""Worker CPU per no-op job, and where it goes: ``python -m benchmarks profile [-n 20000]``.

A private redis-server; each run enqueues N no-op jobs with stock RQ and drains them with
``asyncjobs-worker --burst --concurrency C`` in a child process.  The CPU figure is the child's own
user + system time (``os.wait4``; threads included, start-up included) divided by N, the smallest of
``--repeat`` runs.  ``--before REF`` also runs the asyncjobs package as of git revision REF,
interleaved run by run with this checkout's: CPU time on a shared machine moves with its load (by
2x here between sittings), so only runs of the same sitting compare.  Then one more run of each under
``cProfile`` (the event loop's thread: ``--workload noop_async`` shows a job's whole path there)
gives the top functions by own time.  Every run checks that N jobs finished.

Writes ``benchmarks/results/profile/profile-<workload>-latest.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
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


def _run(url: str, args: argparse.Namespace, env: dict[str, str], profile_to: Path | None, cwd: Path) -> float:
    """Drain the queue once; returns the child's CPU seconds (user + system)."""
    prefix = [sys.executable]
    if profile_to is not None:
        prefix += ["-m", "cProfile", "-o", str(profile_to)]
    # run from a scratch directory: ``-m`` puts the working directory first on sys.path, where this
    # checkout would shadow a --before revision's package on PYTHONPATH
    argv = [*prefix, str(Path(sys.executable).with_name("asyncjobs-worker")), "--burst", "--concurrency", str(args.concurrency), "-u", url,
            "-l", "WARNING", "-P", str(ROOT), QUEUE]
    # stderr to a file: a pipe nobody reads until the end blocks a worker that writes more than it holds
    with tempfile.TemporaryFile(dir=cwd) as errf:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=errf)
        timer = threading.Timer(args.timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read().decode(errors="replace")
    if proc.returncode == -signal.SIGKILL:
        raise SystemExit(
            f"the worker{' under cProfile' if profile_to else ''} did not drain {args.n} jobs within --timeout "
            f"{args.timeout:g} s and was killed (CPython 3.11.7's cProfile has been seen to spin for good in "
            f"Thread.start; try --workload noop_async, or py-spy). Its stderr:\n{err[-3000:]}"
        )
    if proc.returncode != 0:
        raise SystemExit(f"worker exited with {proc.returncode}:\n{err[-3000:]}")
    return usage.ru_utime + usage.ru_stime


def _top(prof: Path, top: int) -> str:
    text = io.StringIO()
    pstats.Stats(str(prof), stream=text).sort_stats("tottime").print_stats(top)
    body = text.getvalue()
    return body[body.index("   ncalls"):] if "   ncalls" in body else body


def main(args: argparse.Namespace) -> int:
    """Each repetition runs every contender once (``--before REF`` first), so drift in the machine's
    load hits both alike; CPU time on a shared machine moves with its load (caches, frequency)."""
    func = f"benchmarks.jobs.{args.workload}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = RedisServer()
    server.start()
    with contextlib.closing(server), tempfile.TemporaryDirectory(prefix="asyncjobs-profile-") as tmpdir:
        tmp = Path(tmpdir)
        base = dict(os.environ, BENCH_LEDGER="", PYTHONUNBUFFERED="1")
        refs = [r for r in (args.before, args.source) if r] + ([] if args.source else ["this checkout"])
        envs: dict[str, dict[str, str]] = {}
        for ref in refs:
            source = [] if ref == "this checkout" else [str(_package_at(ref, tmp / ref.replace("/", "_")))]
            envs[ref] = dict(base, PYTHONPATH=os.pathsep.join(
                filter(None, [*source, str(ROOT), base.get("PYTHONPATH", "")])))
        conn = redis.Redis.from_url(server.url)
        cpu: dict[str, list[float]] = {ref: [] for ref in refs}
        profiles: dict[str, Path] = {}
        for rep in range(args.repeat + 1):
            profiled = rep == args.repeat
            for ref in refs:
                conn.flushdb()
                _enqueue(conn, func, args.n)
                prof = tmp / f"{len(profiles)}.prof"
                t0 = time.perf_counter()
                seconds = _run(server.url, args, envs[ref], prof if profiled else None, tmp)
                wall = time.perf_counter() - t0
                done = FinishedJobRegistry(QUEUE, connection=conn).count
                if done != args.n:
                    raise SystemExit(f"{ref}: {done} of {args.n} jobs finished: the run is not valid")
                label = "profiled" if profiled else f"rep {rep + 1}"
                print(f"{ref} {label}: {seconds / args.n * 1000:.3f} CPU ms/job ({wall:.1f} s wall)", file=sys.stderr)
                if profiled:
                    profiles[ref] = prof
                else:
                    cpu[ref].append(seconds)
        conn.close()
        tops = {ref: _top(prof, args.top) for ref, prof in profiles.items()}
        if args.keep:
            for i, prof in enumerate(profiles.values()):
                Path(f"{args.keep}.{i}" if len(profiles) > 1 else args.keep).write_bytes(prof.read_bytes())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [f"## Worker CPU per job: {args.workload}, n={args.n}, --concurrency {args.concurrency} ({stamp})", "",
             f"CPU ms/job: user + system of the worker process (start-up included), best of {args.repeat} "
             "interleaved repetitions (all in brackets)", "",
             "| asyncjobs | CPU ms/job | all |", "|---|---:|---|"]
    for ref in refs:
        lines.append(f"| {ref} | **{min(cpu[ref]) / args.n * 1000:.3f}** | "
                     f"{', '.join(f'{c / args.n * 1000:.3f}' for c in cpu[ref])} |")
    for ref in refs:
        lines += ["", f"cProfile of {ref}, top {args.top} by own time (the event loop's thread; profiling "
                  "slows it down):", "", "```", tops[ref].rstrip(), "```"]
    report = "\n".join(lines) + "\n"
    (out / f"profile-{args.workload}-latest.md").write_text(report)
    print(report)
    return 0
