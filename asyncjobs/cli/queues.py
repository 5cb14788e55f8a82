"""``asyncjobs-worker queues``: show, set and clear queue limits; pause and resume queues.

Forms::

    asyncjobs-worker queues [QUEUE ...] [--json]          # per queue: size, running, limits, pause
    asyncjobs-worker queues limit QUEUE [--concurrency N] [--rate 20/s] [--clear]
    asyncjobs-worker queues pause QUEUE [--for 10m]
    asyncjobs-worker queues resume QUEUE

Limits live in Redis (:mod:`asyncjobs.limits`): every asyncjobs worker obeys a change at its next claim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from asyncjobs.cli.rqconfig import add_connection_args, read_settings_module, resolve_target
from asyncjobs.limits import QueueControl, QueueLimits, parse_duration

__all__ = ["run_drain", "run_queues"]

ACTIONS = ("limit", "pause", "resume")


def _parser(action: str | None) -> argparse.ArgumentParser:
    prog = "asyncjobs-worker queues" + (f" {action}" if action else "")
    if action is None:
        p = argparse.ArgumentParser(
            prog=prog,
            description="Per queue: jobs queued, jobs running on all workers, limits and pauses. Also: "
            "`queues limit QUEUE --concurrency N --rate 20/s`, `queues pause QUEUE [--for 10m]`, "
            "`queues resume QUEUE`.",
        )
        p.add_argument("queue_names", nargs="*", metavar="QUEUE", help="only these queues")
        p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    else:
        p = argparse.ArgumentParser(prog=prog)
        p.add_argument("queue", metavar="QUEUE")
    if action == "limit":
        p.description = "Set (or with --clear remove) a queue's fleet-wide limits; they apply at once."
        p.add_argument("--concurrency", type=int, default=None, metavar="N",
                       help="at most N jobs of the queue running on all workers together")
        p.add_argument("--rate", default=None, metavar="N/PERIOD",
                       help="at most N job starts per period, e.g. 20/s, 600/m, 5/10s")
        p.add_argument("--clear", action="store_true", help="remove the queue's limits (both, unless one is named)")
    elif action == "pause":
        p.description = "Start nothing new of the queue on any asyncjobs worker (running jobs finish)."
        p.add_argument("--for", dest="duration", default=None, metavar="DURATION",
                       help="for this long (e.g. 90s, 10m, 2h), then resume by itself; default: until resumed")
    elif action == "resume":
        p.description = "End a queue's pause."
    add_connection_args(p, config_short=False)
    p.add_argument("--path", "-P", action="append", default=None, help="add a directory to sys.path (for -c)")
    return p


def _show(limits: QueueLimits) -> str:
    parts = []
    if limits.concurrency is not None:
        parts.append(f"concurrency {limits.concurrency}")
    if limits.rate is not None:
        parts.append(f"rate {limits.rate}")
    if limits.paused_until is not None:
        parts.append("paused until resumed" if limits.paused_until == float("inf") else "paused (timed)")
    return f"{limits.queue}: " + (", ".join(parts) if parts else "no limits")


def run_queues(argv: Sequence[str]) -> int:
    from redis.exceptions import RedisError

    from asyncjobs.cli import info as info_mod

    action = argv[0] if argv and argv[0] in ACTIONS else None
    args = _parser(action).parse_args(argv[1:] if action else argv)
    for path in reversed(args.path or ["."]):
        sys.path.insert(0, os.path.abspath(path))
    prog = "asyncjobs-worker queues" + (f" {action}" if action else "")
    try:
        module = args.config or os.environ.get("RQ_CONFIG") or None
        target = resolve_target(args, read_settings_module(module) if module else None)
        duration = parse_duration(args.duration) if action == "pause" and args.duration else None
        if action == "limit" and not args.clear and args.concurrency is None and args.rate is None:
            raise ValueError("give --concurrency N and/or --rate N/PERIOD, or --clear")
    except (ValueError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    conn = target.sync_client(socket_timeout=10, socket_connect_timeout=5)
    try:
        control = QueueControl(conn)
        result: Any
        if action == "limit":
            if args.clear:
                named = args.concurrency is not None or args.rate is not None
                result = control.clear(
                    args.queue, concurrency=not named or args.concurrency is not None,
                    rate=not named or args.rate is not None,
                )
            else:
                result = control.limit(args.queue, concurrency=args.concurrency, rate=args.rate)
            print(_show(result))
            return 0
        if action == "pause":
            result = control.pause(args.queue, duration)
            print(_show(result) + (f" (for {duration:g}s)" if duration is not None else ""))
            return 0
        if action == "resume":
            print(_show(control.resume(args.queue)))
            return 0
        snap = info_mod.collect(conn, args.queue_names or None)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"{prog}: Redis unreachable at {target.describe()}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"at": snap.at, "queues": [q.__dict__ for q in snap.queues],
                          "warnings": info_mod.stock_warnings(snap)}, indent=2))
        return 0
    print(f"{'queue':<20} {'queued':>7} {'running':>8}  limits")
    for q in snap.queues:
        print(f"{q.name:<20} {q.queued:>7} {q.running:>8}  {info_mod.describe_limits(q) or '-'}")
    for warning in info_mod.stock_warnings(snap):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_drain(argv: Sequence[str]) -> int:
    """``asyncjobs-worker drain NAME ...``: each named asyncjobs worker (and ``NAME-<i>``, the children
    of ``--processes``) stops claiming, finishes its jobs in flight and exits 0."""
    from redis.exceptions import RedisError

    from asyncjobs.protocol import keys

    p = argparse.ArgumentParser(
        prog="asyncjobs-worker drain",
        description="Ask workers to stop claiming, finish every job in flight (however long it takes) and "
        "exit 0, e.g. before a deploy. Under --processes the supervisor starts a fresh child, as after a "
        "recycle: to take a whole pool down, send it SIGTERM.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="worker name (NAME-<i> children match too)")
    add_connection_args(p, config_short=False)
    p.add_argument("--path", "-P", action="append", default=None, help="add a directory to sys.path (for -c)")
    args = p.parse_args(argv)
    for path in reversed(args.path or ["."]):
        sys.path.insert(0, os.path.abspath(path))
    try:
        module = args.config or os.environ.get("RQ_CONFIG") or None
        target = resolve_target(args, read_settings_module(module) if module else None)
    except (ValueError, TypeError) as exc:
        print(f"asyncjobs-worker drain: error: {exc}", file=sys.stderr)
        return 2
    conn = target.sync_client(socket_timeout=10, socket_connect_timeout=5)
    missing = []
    try:
        registered = [
            (k.decode() if isinstance(k, bytes) else str(k)).removeprefix(keys.DEFAULT.worker_prefix)
            for k in conn.smembers(keys.WORKERS)
        ]
        for name in args.names:
            found = [w for w in registered if w == name or (w.rpartition("-")[0] == name and w.rpartition("-")[2].isdigit())]
            told = sum(int(conn.publish(keys.pubsub(w), json.dumps({"command": "drain"}))) for w in sorted(found))
            if not told:
                missing.append(name)
            else:
                print(f"{name}: drain sent to {', '.join(sorted(found))}")
    except (RedisError, OSError) as exc:
        print(f"asyncjobs-worker drain: Redis unreachable at {target.describe()}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    for name in missing:
        print(f"asyncjobs-worker drain: no live worker named {name!r} is listening (see `asyncjobs-worker info`)",
              file=sys.stderr)
    return 1 if missing else 0
