"""``python -m tests.chaos``: the chaos suite of issue 9 (``make chaos``).

    python -m tests.chaos [--scenarios sigkill,proxy] [--jobs 2000] [--minutes N] [--seed S]
                          [--out tests/chaos/results] [--keep]

Without ``--minutes`` (or ``CHAOS_MINUTES``) every scenario runs once, a bounded run of a
few minutes.  With it, rounds of all scenarios (new seeds each round) repeat until N
minutes have passed: a soak.  Prints a table, writes ``latest.json`` and ``latest.md``.
Exit status 0 when every scenario passed, 2 when any invariant was broken, 1 when the
harness itself failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.chaos import report
from tests.chaos.runner import SCENARIOS, Row, run_scenario
from tests.testsupport.redis_server import RedisServer
from tests.testsupport.workers import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "tests" / "chaos" / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _meta(argv: list[str], minutes: float) -> dict[str, Any]:
    import rq

    redis_server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    version = next((p[2:] for p in redis_server.split() if p.startswith("v=")), "unknown")
    return {
        "command": " ".join(["python -m tests.chaos", *argv]).strip(),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "main_commit": _git("rev-parse", "--short", "main"),
        "python": sys.version.split()[0],
        "redis_server": version,
        "rq": rq.__version__,
        "minutes": minutes,
    }


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("CHAOS_JOBS", "2000")), help="jobs per scenario")
    p.add_argument("--produce-seconds", type=float, default=12.0, help="enqueue the jobs over this long")
    p.add_argument("--minutes", type=float, default=float(os.environ.get("CHAOS_MINUTES", "0") or 0),
                   help="soak: repeat rounds until this many minutes have passed (default: one round)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where latest.json and latest.md go")
    p.add_argument("--work-dir", type=Path, default=None, help="logs of failing scenarios (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep logs and ledgers of passing scenarios too")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios.split(",") if s and s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.jobs < 10:
        p.error(f"--jobs must be at least 10, got {args.jobs}")
    return args


def _stop_on_signal(signum: int, frame: object) -> None:
    print(f"chaos: stopped by {signal.Signals(signum).name}; stopping the servers and workers it started", flush=True)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    # SIGTERM (CI cancelling a job, `kill <pid>`) unwinds like Ctrl-C, so every server and worker
    # this run started is stopped by the cleanup code on the way out.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    logging.getLogger("rq").setLevel(logging.ERROR)  # RQ's cleanup logs each abandoned job it fails
    names = [s for s in args.scenarios.split(",") if s]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="asyncjobs-chaos-"))
    side = RedisServer()
    side.start()
    rows: list[Row] = []
    started = time.monotonic()
    soak = args.minutes > 0
    kind = f"soak of {args.minutes:.1f} min" if soak else "bounded run"
    print(f"chaos: {kind}, scenarios {', '.join(names)}; work dir {work}")
    try:
        round_ = 0
        while True:
            for name in names:
                seed = args.seed + round_
                try:
                    row = run_scenario(
                        SCENARIOS[name], work, side.url + "?socket_timeout=5", seed=seed, jobs=args.jobs,
                        produce_seconds=args.produce_seconds, keep=args.keep,
                    )
                except Exception:
                    traceback.print_exc()
                    print(f"chaos: the harness failed in scenario {name} (seed {seed}); logs in {work}", file=sys.stderr)
                    return 1
                rows.append(row)
                own = f", {len(row.rq_problems)} of RQ's own" if row.rq_problems else ""
                print(f"  {row.scenario}: {row.verdict} ({row.problems} problem(s){own}, {row.duration_s:.0f}s)")
                for sample in row.problem_samples[:5]:
                    print("    " + sample.splitlines()[0][:240])
                if soak and time.monotonic() - started > args.minutes * 60:
                    break
            round_ += 1
            if not soak or time.monotonic() - started > args.minutes * 60:
                break
    finally:
        side.close()
    minutes = (time.monotonic() - started) / 60
    print()
    print(report.table(rows))
    js, md = report.write(rows, _meta(argv, minutes), args.out)
    print(f"\nreport: {js} and {md}")
    failed = [r for r in rows if r.verdict != "pass"]
    if failed:
        print(f"chaos: {len(failed)} of {len(rows)} scenario run(s) FAILED; logs under {work}")
        return 2
    print(f"chaos: all {len(rows)} scenario run(s) passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
