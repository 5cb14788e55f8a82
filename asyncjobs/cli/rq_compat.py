"""Moved to :mod:`asyncjobs.host.rq_compat`; this path keeps ``rq worker -w asyncjobs.cli.rq_compat.AsyncWorker`` working.

Use ``rq worker -w asyncjobs.AsyncWorker`` (the public name).
"""

from __future__ import annotations

from asyncjobs.host.rq_compat import AsyncWorker

__all__ = ["AsyncWorker"]
