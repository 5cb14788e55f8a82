"""``asyncjobs-worker``: the command-line entry point (a drop-in for ``rq worker``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.runner import run_worker, setup_logging

log = logging.getLogger("asyncjobs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncjobs-worker",
        description="Run RQ jobs concurrently on one asyncio event loop (a drop-in for `rq worker`).",
    )
    p.add_argument("queue_names", nargs="*", metavar="QUEUE", help="queues to listen on, highest priority first")
    p.add_argument("--queues", "-Q", default="", help="comma-separated queues (alternative to positional names)")
    p.add_argument("--url", "-u", default=None, help="Redis URL (default: $REDIS_URL or redis://localhost:6379/0)")
    p.add_argument("--concurrency", "-c", type=int, default=10, help="jobs in flight at once (default 10)")
    p.add_argument("--threads", type=int, default=None, help="thread pool size for sync jobs (default: concurrency)")
    p.add_argument("--burst", "-b", action="store_true", help="exit when the queues are empty")
    p.add_argument("--name", "-n", default=None, help="worker name (default: random hex)")
    p.add_argument("--serializer", "-S", default="pickle", help="pickle, json, or a dotted path (like rq worker -S)")
    p.add_argument("--results-ttl", type=int, default=500, help="default result TTL in seconds (default 500)")
    p.add_argument("--worker-ttl", type=int, default=420, help="worker key TTL in seconds (default 420)")
    p.add_argument("--job-monitoring-interval", type=float, default=30.0, help="heartbeat interval (default 30 s)")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument("--max-idle-time", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument(
        "--dequeue-strategy", default="default", choices=["default", "round_robin", "random"],
        help="order in which queues are tried",
    )
    p.add_argument("--path", "-P", action="append", default=None, help="add a directory to sys.path (default: .)")
    p.add_argument("--logging-level", "-l", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="grace period for in-flight jobs after SIGTERM before they are put back (default 30 s)")
    p.add_argument("--with-scheduler", action="store_true", help="also move due scheduled jobs to their queues")
    p.add_argument("--maintenance-interval", type=float, default=600.0, help="registry cleanup interval (600 s)")
    p.add_argument("--allow-module", action="append", default=[], metavar="PREFIX",
                   help="only run functions from modules under PREFIX (repeatable); default: any")
    p.add_argument("--exception-handler", action="append", default=[], help="dotted path of an exception handler")
    p.add_argument("--disable-default-exception-handler", action="store_true")
    p.add_argument("--processes", type=int, default=1, help="run N worker processes under one supervisor")
    p.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    queues: list[str] = list(args.queue_names)
    if args.queues:
        queues += [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues:
        queues = ["default"]
    url = args.url or os.environ.get("REDIS_URL") or "redis://localhost:6379/0"
    return WorkerConfig(
        queues=tuple(dict.fromkeys(queues)),
        redis_url=url,
        name=args.name,
        concurrency=args.concurrency,
        threads=args.threads,
        burst=args.burst,
        serializer=args.serializer,
        default_result_ttl=args.results_ttl,
        worker_ttl=args.worker_ttl,
        job_monitoring_interval=args.job_monitoring_interval,
        max_jobs=args.max_jobs,
        max_idle_time=args.max_idle_time,
        dequeue_strategy=args.dequeue_strategy,
        shutdown_timeout=args.shutdown_timeout,
        with_scheduler=args.with_scheduler,
        maintenance_interval=args.maintenance_interval,
        allowed_modules=tuple(args.allow_module),
        exception_handlers=tuple(args.exception_handler),
        disable_default_exception_handler=args.disable_default_exception_handler,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.logging_level)
    for path in reversed(args.path or ["."]):
        sys.path.insert(0, os.path.abspath(path))
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.processes > 1:
        from asyncjobs.worker.pool import run_pool

        return run_pool(config, args.processes, use_uvloop=args.uvloop)
    return run_worker(config, use_uvloop=args.uvloop)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
