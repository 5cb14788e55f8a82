"""Lifecycle hooks in-process against a real Redis: where each hook runs, what it sees, and that a
failing hook never changes or loses a job's stored outcome."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.job import Job

from asyncjobs import hooks as public_hooks
from asyncjobs.hooks import HookError, StartupHookFailed, WorkerHooks
from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.hookset import load_hooks
from asyncjobs.worker.worker import Worker
from tests.worker import hookjobs
from tests.worker.conftest import eventually

H = "tests.worker.hookjobs"


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    hookjobs.events.clear()


def status(conn: redis.Redis, job_id: str) -> str | None:
    value = conn.hget(f"rq:job:{job_id}", "status")
    return value.decode() if value else None


def one(kind: str, job_id: str) -> dict[str, Any]:
    found = hookjobs._events(kind, job_id)
    assert len(found) == 1, (kind, job_id, hookjobs.events)
    return found[0]


async def test_sync_hooks_of_a_sync_job_run_on_its_thread(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    ok = q.enqueue(f"{H}.sync_ok", 7, meta={"tag": "t-1"})
    bad = q.enqueue(f"{H}.sync_boom")
    await start_worker(concurrency=4, hooks=(hookjobs.SyncHooks(), hookjobs.AsyncHooks()))
    await eventually(lambda: status(sync_redis, ok.id) == "finished" and status(sync_redis, bad.id) == "failed",
                     what="both jobs ended")
    loop_thread = threading.get_ident()
    for job in (ok, bad):
        before, ran, after = one("before", job.id), one("job", job.id), one("after", job.id)
        # Same thread for before_job, the function and after_job, and not the loop's.
        assert before["thread"] == ran["thread"] == after["thread"] != loop_thread
        assert before["is_async"] is False and before["queue"] == "default" and before["rq_id"] == job.id
        assert ran["conn"] == f"conn-{job.id}"  # the thread-local "connection" before_job opened
        assert after["conn"] == f"conn-{job.id}"
        assert ran["ctx"] == f"ctx-{job.id}" and after["ctx"] == f"ctx-{job.id}"  # one context per job
        assert ran["actx"] == f"actx-{job.id}"  # an async before_job's context variable reaches the thread
        # async hooks of a sync job: on the loop, with the outcome as stored
        assert one("abefore", job.id)["thread"] == loop_thread
        aafter = one("aafter", job.id)
        assert aafter["thread"] == loop_thread and aafter["mark"] == job.id and aafter["actx"] == f"actx-{job.id}"
    assert one("before", ok.id)["tag"] == "t-1" and one("before", ok.id)["func"] == f"{H}.sync_ok"
    assert one("after", ok.id)["status"] == "finished" and one("after", ok.id)["exception"] is None
    assert one("aafter", ok.id)["status"] == "finished"
    failed = one("after", bad.id)
    assert failed["status"] == "failed" and isinstance(failed["exception"], ValueError)
    assert "ValueError: job boom" in failed["exc_text"] and failed["duration"] >= 0
    assert one("aafter", bad.id)["status"] == "failed"
    assert isinstance(one("aafter", bad.id)["exception"], ValueError)


async def test_hooks_of_an_async_job_run_on_the_loop_in_its_context(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    ok = q.enqueue(f"{H}.async_ok", 1)
    bad = q.enqueue(f"{H}.async_boom")
    await start_worker(concurrency=4, hooks=(hookjobs.SyncHooks(), hookjobs.AsyncHooks()))
    await eventually(lambda: status(sync_redis, ok.id) == "finished" and status(sync_redis, bad.id) == "failed",
                     what="both jobs ended")
    loop_thread = threading.get_ident()
    for job in (ok, bad):
        ran = one("job", job.id)
        assert ran["thread"] == loop_thread
        assert ran["ctx"] == f"ctx-{job.id}" and ran["actx"] == f"actx-{job.id}"
        assert one("before", job.id)["thread"] == loop_thread and one("before", job.id)["is_async"] is True
        assert one("after", job.id)["thread"] == loop_thread
        assert one("after", job.id)["ctx"] == f"ctx-{job.id}"  # after_job sees what before_job set
    assert one("after", ok.id)["status"] == one("aafter", ok.id)["status"] == "finished"
    assert one("after", bad.id)["status"] == one("aafter", bad.id)["status"] == "failed"
    assert "async job boom" in one("after", bad.id)["exc_text"]


async def test_retried_and_stopped_outcomes(sync_redis: redis.Redis, start_worker) -> None:
    q = Queue("default", connection=sync_redis)
    retried = q.enqueue(f"{H}.sync_boom", retry=Retry(max=1))
    aretried = q.enqueue(f"{H}.async_boom", retry=Retry(max=1))
    spin = q.enqueue(f"{H}.sync_spin", 60)
    sleep = q.enqueue(f"{H}.async_sleep", 60)
    await start_worker(concurrency=6, hooks=(hookjobs.SyncHooks(), hookjobs.AsyncHooks()))
    await eventually(lambda: hookjobs._events("job", spin.id) and hookjobs._events("job", sleep.id),
                     what="long jobs running")

    def stopped() -> bool:  # resent until it lands: the command channel may not be subscribed yet
        for job in (spin, sleep):
            if status(sync_redis, job.id) == "started":
                send_stop_job_command(sync_redis, job.id)
        return all(status(sync_redis, j.id) == "stopped" for j in (spin, sleep))

    await eventually(stopped, what="long jobs stopped")
    await eventually(
        lambda: all(status(sync_redis, j.id) in ("failed", "stopped") for j in (retried, aretried, spin, sleep)),
        what="all jobs ended",
    )
    for job in (retried, aretried):
        assert [e["status"] for e in hookjobs._events("after", job.id)] == ["retried", "failed"]
        assert [e["status"] for e in hookjobs._events("aafter", job.id)] == ["retried", "failed"]
    for job in (spin, sleep):
        assert status(sync_redis, job.id) == "stopped"
        assert one("after", job.id)["status"] == one("aafter", job.id)["status"] == "stopped"


async def test_failing_hooks_never_change_or_lose_the_outcome(
    sync_redis: redis.Redis, start_worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncjobs.worker.hooks")
    q = Queue("default", connection=sync_redis)
    jobs = {
        "sync_ok": q.enqueue(f"{H}.sync_ok", 5),
        "sync_boom": q.enqueue(f"{H}.sync_boom"),
        "async_ok": q.enqueue(f"{H}.async_ok", 6),
        "async_boom": q.enqueue(f"{H}.async_boom"),
    }
    hooks = (hookjobs.BrokenHooks(), hookjobs.BrokenAsyncHooks(), hookjobs.SyncHooks())
    await start_worker(concurrency=4, hooks=hooks)
    await eventually(lambda: all(status(sync_redis, j.id) in ("finished", "failed") for j in jobs.values()),
                     what="all jobs ended")
    ok, aok = Job.fetch(jobs["sync_ok"].id, sync_redis), Job.fetch(jobs["async_ok"].id, sync_redis)
    assert (ok.get_status(), ok.return_value()) == ("finished", 5)
    assert (aok.get_status(), aok.return_value()) == ("finished", 6)
    for name, text in (("sync_boom", "ValueError: job boom"), ("async_boom", "ValueError: async job boom")):
        job = Job.fetch(jobs[name].id, sync_redis)
        assert job.get_status() == "failed"
        assert text in (job.latest_result().exc_string or "")
        assert "hook broke" not in (job.latest_result().exc_string or "")
    for job in jobs.values():
        # the hooks after the broken ones still ran, and each failure was logged with the job id
        assert one("after", job.id)["status"] in ("finished", "failed")
        messages = [r.getMessage() for r in caplog.records if getattr(r, "job_id", None) == job.id]
        assert any("before_job hook" in m and "BrokenHooks.before_job failed" in m for m in messages), messages
        assert any("after_job hook" in m and "BrokenHooks.after_job failed" in m for m in messages), messages
        assert any("BrokenAsyncHooks.before_job failed" in m for m in messages), messages
        assert any("BrokenAsyncHooks.after_job failed" in m for m in messages), messages


async def test_startup_and_shutdown_hooks_and_the_lifecycle_registry(
    sync_redis: redis.Redis, start_worker
) -> None:
    calls: list[str] = []

    async def startup() -> None:
        calls.append("startup")

    def shutdown() -> None:
        calls.append("shutdown")

    async def registry_hook() -> None:  # what the delivery pools register from inside jobs
        calls.append("lifecycle")

    def before(job: Any) -> None:
        calls.append("job")
        public_hooks.on_shutdown(registry_hook)

    Queue("default", connection=sync_redis).enqueue(f"{H}.sync_ok", 1)
    _, task = await start_worker(burst=True, hooks=(WorkerHooks(on_startup=startup, on_shutdown=shutdown,
                                                                before_job=before),))
    await task
    assert calls == ["startup", "job", "shutdown", "lifecycle"]


async def test_failing_startup_hook_stops_the_worker_before_it_registers(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    def startup() -> None:
        raise RuntimeError("no database")

    job = Queue("default", connection=sync_redis).enqueue(f"{H}.sync_ok", 1)
    worker = Worker(WorkerConfig(queues=("default",), redis_url=redis_url, burst=True),
                    hooks=[WorkerHooks(on_startup=startup)])
    with pytest.raises(StartupHookFailed, match="no database"):
        await worker.run()
    assert sync_redis.smembers("rq:workers") == set()
    assert status(sync_redis, job.id) == "queued"  # not taken


def test_bad_hook_sources_are_clear_errors() -> None:
    with pytest.raises(HookError, match="'no_such_module_xyz'"):
        load_hooks(["no_such_module_xyz"])
    with pytest.raises(HookError, match=r"'tests\.worker\.jobs'.*defines none of on_startup"):
        load_hooks(["tests.worker.jobs"])
    with pytest.raises(HookError, match="has no attribute 'Nope'"):
        load_hooks(["tests.worker.hookjobs:Nope"])
    with pytest.raises(HookError, match="before_job is 3"):
        load_hooks([type("H", (), {"before_job": 3})()])
    hooks = load_hooks(["tests.worker.hookjobs:SyncHooks", WorkerHooks(on_shutdown=lambda: None)])
    assert len(hooks.before_job) == 1 and len(hooks.on_shutdown) == 1
