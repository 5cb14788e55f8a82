"""The ``asyncjobs-worker`` console script (and ``python -m asyncjobs``): stop signals count from the start.

A worker process spends its first second importing and reading its configuration before its event loop
installs the SIGTERM/SIGINT handlers; a signal then (a container stopped right after it started, a
supervisor restarting it) would kill it with the default action.  This entry point records SIGTERM and
SIGINT from its first line, before the heavy imports, and hands what it saw to the worker, which stops
before it registers, exactly as for a signal a moment later (exit 0).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

_EARLY: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _EARLY.append(signum)


def main(argv: Sequence[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record)
    from asyncjobs.cli.worker import main as worker_main

    return worker_main(argv, early_signals=_EARLY)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
