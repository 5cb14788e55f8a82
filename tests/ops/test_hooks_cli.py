"""Hooks given on the command line: ``asyncjobs-worker --hooks MODULE`` and ``rq worker -w
asyncjobs.AsyncWorker`` with ``ASYNCJOBS_HOOKS``, in real worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq import Queue

from tests.testsupport.workers import run_asyncjobs_worker, run_rq_worker_with_asyncjobs_class

HOOKS = "tests.ops.hookmod"


def _check_ledger(ledger: Path, job_id: str) -> None:
    lines = [ln.split() for ln in ledger.read_text().splitlines()]
    kinds = [ln[0] for ln in lines]
    assert kinds == ["startup", "before", "job", "after", "shutdown"], lines
    before, job, after = lines[1], lines[2], lines[3]
    assert before[1] == after[1] == job_id
    assert before[2] == job[2] == after[2]  # one thread: the sync job's own
    assert after[3] == "finished"


@pytest.mark.parametrize("runner", ["asyncjobs-worker", "rq worker -w"])
def test_hooks_module_from_the_command_line(
    runner: str, redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    job = Queue("hooked", connection=sync_redis).enqueue(f"{HOOKS}.thread_job", "t1")
    env = {"HOOK_LEDGER": str(ledger)}
    if runner == "asyncjobs-worker":
        worker = run_asyncjobs_worker(redis_url, "hooked", "--burst", "--hooks", HOOKS, env=env)
    else:
        worker = run_rq_worker_with_asyncjobs_class(redis_url, "hooked", "--burst",
                                                    env={**env, "ASYNCJOBS_HOOKS": HOOKS})
    with worker:
        assert worker.wait(60) == 0, worker.output()
    assert job.get_status(refresh=True) == "finished"
    _check_ledger(ledger, job.id)


def test_bad_hooks_module_is_a_clear_error(redis_url: str) -> None:
    with run_asyncjobs_worker(redis_url, "q", "--burst", "--hooks", "no_such_hooks_module") as worker:
        assert worker.wait(30) == 2
        assert "cannot import hooks module 'no_such_hooks_module'" in worker.output()
    with run_asyncjobs_worker(redis_url, "q", "--burst", "--hooks", "tests.ops.jobs") as worker:
        assert worker.wait(30) == 2
        assert "defines none of on_startup, on_shutdown, before_job, after_job" in worker.output()
