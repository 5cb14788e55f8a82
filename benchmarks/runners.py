"""Subprocess entry points for the contenders that have no burst-mode CLI of their own.

``python -m benchmarks.runners ceiling --workload W --run-id R -n N --concurrency C``
    The no-queue ceiling: the workload's coroutine run C at a time by plain
    asyncio tasks pulling from an in-memory list.  Prints one JSON line with the
    elapsed time and the start/end latencies (all jobs count as enqueued at t0).

``python -m benchmarks.runners saq --url URL --concurrency C``
    A SAQ worker (its periodic sweep disabled, see below) on the queue ``bench`` (jobs enqueued by the harness in SAQ's
    own format) that stops once N jobs have finished.  SAQ's own ``burst=True``
    is not used: it stops while the last jobs are still in flight and cancels
    them (they end up ``aborted`` or re-``queued``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any


def token(run_id: str, i: int) -> str:
    return f"bjt-{run_id}-{i:07d}"


def _loop_run(coro: Any, loop_impl: str) -> Any:
    if loop_impl == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def ceiling(workload: str, run_id: str, n: int, concurrency: int) -> dict[str, Any]:
    from benchmarks.jobs import ASYNC_FUNCTIONS

    func = ASYNC_FUNCTIONS[workload]
    tokens = [token(run_id, i) for i in range(n)]
    it = iter(tokens)
    starts: list[float] = []
    ends: list[float] = []
    t0 = time.perf_counter()

    async def lane() -> None:
        for tok in it:
            s = time.perf_counter()
            await func(tok)
            starts.append(s - t0)
            ends.append(time.perf_counter() - t0)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))
    elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "n": n, "start_latencies": starts, "end_latencies": ends,
            "first_start": min(starts), "last_end": max(ends)}


async def saq_worker(url: str, concurrency: int, n: int) -> None:
    from saq import Queue, Worker

    from benchmarks.jobs import SAQ_FUNCTIONS

    queue = Queue.from_url(url, name="bench")
    done = 0
    worker: Worker[Any]

    async def after_process(ctx: Any) -> None:
        nonlocal done
        done += 1
        if done >= n:
            worker.event.set()  # every job has finished (its status is written): stop

    # SAQ sweeps its active list as soon as the worker starts; with a pre-filled queue that sweep
    # races the first dequeues and aborts a job that was moved to "active" but not yet marked so
    # (observed: one "aborting" and one "aborted" job per run, though both jobs ran).  Skip it:
    # nothing is stale in a fresh benchmark database.
    real_sweep = queue.sweep

    async def sweep(*args: Any, **kwargs: Any) -> Any:
        return []

    queue.sweep = sweep  # type: ignore[method-assign]
    del real_sweep
    worker = Worker(queue, functions=SAQ_FUNCTIONS, concurrency=concurrency, after_process=after_process)
    try:
        await worker.start()
    finally:
        await queue.disconnect()


def observer_cost(mode: str, n: int = 100_000) -> dict[str, Any]:
    """CPU microseconds per job of the worker's metrics calls (start delay, end: count + duration),
    in one process (``single``) or prometheus_client's multiprocess mode (``mp``, as under
    ``--processes``), or with metrics off; best of 5 rounds, so other load on the machine barely shows."""
    import tempfile
    from datetime import UTC, datetime, timedelta

    from asyncjobs import metrics
    from asyncjobs.protocol.transitions import Kind
    from asyncjobs.worker.observer import Observer

    with tempfile.TemporaryDirectory(prefix="bench-mp-") as tmp:
        if mode == "mp":
            metrics.enable(multiprocess_dir=tmp)
        elif mode == "single":
            metrics.enable()
        obs = Observer(None, metrics_on=mode != "off")
        enq = datetime.now(UTC)
        started = enq + timedelta(milliseconds=5)
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                obs.job_began()
                obs.job_running("bench", enq, started)
                obs.job_ended("bench", Kind.SUCCESS, 0.001)
            best = min(best, (time.process_time() - t0) / n * 1e6)
    return {"mode": mode, "us_per_job": round(best, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runners")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("--workload", required=True)
    c.add_argument("--run-id", required=True)
    c.add_argument("-n", type=int, required=True)
    c.add_argument("--concurrency", type=int, required=True)
    c.add_argument("--loop", default=os.environ.get("BENCH_LOOP", "asyncio"))
    s = sub.add_parser("saq")
    s.add_argument("--url", required=True)
    s.add_argument("--concurrency", type=int, required=True)
    s.add_argument("-n", type=int, required=True, help="stop after this many jobs finished")
    s.add_argument("--loop", default=os.environ.get("BENCH_LOOP", "asyncio"))
    o = sub.add_parser("observer-cost")
    o.add_argument("--mode", choices=["off", "single", "mp"], required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.cmd == "observer-cost":
        sys.stdout.write(json.dumps(observer_cost(a.mode)) + "\n")
    elif a.cmd == "ceiling":
        out = _loop_run(ceiling(a.workload, a.run_id, a.n, a.concurrency), a.loop)
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        _loop_run(saq_worker(a.url, a.concurrency, a.n), a.loop)


if __name__ == "__main__":
    main()
