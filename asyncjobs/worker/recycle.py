"""Worker recycling: ``--max-jobs`` and ``--max-memory`` (issue 21 §2).

A stock ``rq worker`` forks a process per job, so a job that leaks memory dies with its fork;
asyncjobs runs every job in one long-lived process, so leaks accumulate.  A worker that reaches
``--max-jobs`` or whose resident set passes ``--max-memory`` stops claiming, finishes the jobs in
flight (a warm stop) and exits.  Under ``--processes`` the supervisor starts a fresh process in its
place at once; alone, a ``--max-memory`` recycle exits with :data:`RECYCLE_EXIT` (75, ``EX_TEMPFAIL``)
so a process manager restarts it (systemd ``Restart=on-failure``, Kubernetes' ``restartPolicy``);
``--max-jobs`` alone exits 0, as ``rq worker --max-jobs`` does.
"""

from __future__ import annotations

import os
import sys

__all__ = ["RECYCLE_EXIT", "MemoryLimit", "current_rss"]

#: Exit status of a recycled worker process (``EX_TEMPFAIL``: "try again"); the supervisor of
#: ``--processes`` replaces a child that exits with it at once, without backoff.
RECYCLE_EXIT = 75


def current_rss() -> int:
    """This process's resident set size in bytes (Linux: now; elsewhere: the peak so far)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


class MemoryLimit:
    """``--max-memory``: is the RSS past ``limit`` bytes?  Read before every claim (a read of
    ``/proc/self/statm`` costs microseconds, a claim a round trip; reading less often let fast leaking
    jobs run far past the limit between two reads)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.rss = 0

    def exceeded(self) -> bool:
        if self.limit is None:
            return False
        self.rss = current_rss()
        return self.rss > self.limit
