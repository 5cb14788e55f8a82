"""``asyncjobs-outbox``: create the outbox table, or run the polling processor.

    asyncjobs-outbox create-tables [--database-url URL]
    asyncjobs-outbox run [--once] [--deliver-directly] [--batch-size N] [--interval SECONDS]
                         [--redispatch-after SECONDS] [--missing-job-grace SECONDS]
                         [--database-url URL]

Settings come from the environment (``ASYNCJOBS_DATABASE_URL``, ``ASYNCJOBS_OUTBOX_*``, ...; the
unprefixed names are deprecated; a file only with ``ASYNCJOBS_ENV_FILE``); options override them.  ``run`` stops gracefully on SIGTERM or
SIGINT: the current batch is finished, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]

log = logging.getLogger("asyncjobs.outbox.cli")


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return x


def _non_negative_float(value: str) -> float:
    x = float(value)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {value}")
    return x


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncjobs-outbox", description="Transactional outbox tools.")
    parser.add_argument("--log-level", default=os.environ.get("ASYNCJOBS_LOG_LEVEL", "INFO"),
                        help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    create = sub.add_parser("create-tables", help="create the outbox_notifications table if missing")
    create.add_argument("--database-url", help="override DATABASE_URL")

    run = sub.add_parser("run", help="poll for due notifications and enqueue (or deliver) them")
    run.add_argument("--database-url", help="override DATABASE_URL")
    run.add_argument("--once", action="store_true", help="dispatch everything due now, then exit")
    run.add_argument("--deliver-directly", action="store_true",
                     help="send from this process instead of enqueueing RQ jobs")
    run.add_argument("--batch-size", type=_positive_int, help="rows per tick (default OUTBOX_BATCH_SIZE)")
    run.add_argument("--interval", type=_positive_float,
                     help="seconds between polls (default OUTBOX_POLL_INTERVAL)")
    run.add_argument("--redispatch-after", type=_positive_float,
                     help="re-enqueue a row still pending this long after its last dispatch "
                          "(default OUTBOX_VISIBILITY_TIMEOUT)")
    run.add_argument("--missing-job-grace", type=_non_negative_float,
                     help="re-enqueue a row whose job is not in Redis this long after its dispatch "
                          "(default 10; queue mode only)")
    return parser


async def _create_tables() -> None:
    from asyncjobs.outbox import notifications
    from asyncjobs.outbox.repository import create_all

    engine = notifications.get_engine()
    try:
        await create_all(engine)
    finally:
        await notifications.dispose_engines()
    from asyncjobs.redact import redact_url

    log.info("outbox table ready (%s)", redact_url(engine.url.render_as_string(hide_password=True)))


async def _run(args: argparse.Namespace) -> None:
    from asyncjobs.outbox import notifications

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("received %s: finishing the current batch, then stopping", signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    try:
        processor = notifications.build_processor(
            deliver_directly=args.deliver_directly,
            batch_size=args.batch_size,
            poll_interval=args.interval,
            redispatch_after=args.redispatch_after,
            missing_job_grace=args.missing_job_grace,
        )
        await processor.run(stop, once=args.once)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await notifications.dispose_engines()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "database_url", None):
        os.environ["ASYNCJOBS_DATABASE_URL"] = args.database_url
    from asyncjobs.delivery.settings import SettingsError, reload_settings

    try:
        reload_settings()
    except SettingsError as exc:
        print(f"asyncjobs-outbox: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "create-tables":
            asyncio.run(_create_tables())
        else:
            asyncio.run(_run(args))
    except KeyboardInterrupt:  # pragma: no cover - signal before the loop installed handlers
        return 130
    except Exception as exc:
        log.error("asyncjobs-outbox %s failed: %s: %s", args.command, type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
