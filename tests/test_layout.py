"""Issue 12, layout: public names that moved keep working at their old paths.

``AsyncWorker`` lives with the worker (``asyncjobs.worker.rq_compat``); ``asyncjobs.AsyncWorker``
is the public name and ``asyncjobs.cli.rq_compat.AsyncWorker`` the old path, both the same class.
"""

from __future__ import annotations

import redis
from rq import Queue

from tests.testsupport.workers import run_rq_worker


def test_async_worker_lives_with_the_worker() -> None:
    import asyncjobs
    from asyncjobs.cli import rq_compat as old
    from asyncjobs.worker import rq_compat

    assert asyncjobs.AsyncWorker is rq_compat.AsyncWorker is old.AsyncWorker
    assert asyncjobs.AsyncWorker.__module__ == "asyncjobs.worker.rq_compat"


def test_rq_cli_with_the_old_async_worker_path(redis_url: str, sync_redis: redis.Redis) -> None:
    job = Queue("default", connection=sync_redis).enqueue("operator.add", 2, 3)
    proc = run_rq_worker(redis_url, "default", "--burst", worker_class="asyncjobs.cli.rq_compat.AsyncWorker")
    try:
        assert proc.wait(120) == 0, proc.output()
        assert job.return_value() == 5, proc.output()
        assert "INFO asyncjobs.worker: worker " in proc.output()  # the asyncjobs engine ran it, not RQ's loop
    finally:
        proc.close()
