"""A hooks module as an application would write one (``--hooks tests.ops.hookmod``): every call
is appended to the ledger file named by $HOOK_LEDGER, with the thread it ran on."""

from __future__ import annotations

import os
import threading

from asyncjobs.hooks import JobOutcome, JobView
from tests.ops.jobs import _append


def _write(*words: object) -> None:
    _append(os.environ["HOOK_LEDGER"], " ".join(str(w) for w in words))


async def on_startup() -> None:
    _write("startup")


def on_shutdown() -> None:
    _write("shutdown")


def before_job(job: JobView) -> None:
    _write("before", job.id, threading.get_ident())


def after_job(job: JobView, outcome: JobOutcome) -> None:
    _write("after", job.id, threading.get_ident(), outcome.status)


def thread_job(token: str) -> str:
    _write("job", token, threading.get_ident())
    return token
