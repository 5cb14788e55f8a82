"""Issue 12, layout: public names that moved keep working at their old paths.

The batteries own their composition (``asyncjobs.delivery.{runtime,tasks,queues,settings,ratelimit}``,
``asyncjobs.outbox.notifications``); ``asyncjobs.tasks``, ``asyncjobs.queues`` and
``asyncjobs.notifications`` stay as thin public faces, and stay the names jobs carry in Redis.
``AsyncWorker`` lives with the worker (``asyncjobs.host.rq_compat``); ``asyncjobs.AsyncWorker``
is the public name and ``asyncjobs.cli.rq_compat.AsyncWorker`` the old path, both the same class.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.testsupport.workers import PROJECT_ROOT, run_asyncjobs_worker, run_rq_worker


def test_async_worker_lives_with_the_worker() -> None:
    import asyncjobs
    from asyncjobs.cli import rq_compat as old
    from asyncjobs.host import rq_compat

    assert asyncjobs.AsyncWorker is rq_compat.AsyncWorker is old.AsyncWorker
    assert asyncjobs.AsyncWorker.__module__ == "asyncjobs.host.rq_compat"


def test_rq_cli_with_the_old_async_worker_path(redis_url: str, sync_redis: redis.Redis) -> None:
    job = Queue("default", connection=sync_redis).enqueue("operator.add", 2, 3)
    proc = run_rq_worker(redis_url, "default", "--burst", worker_class="asyncjobs.cli.rq_compat.AsyncWorker")
    try:
        assert proc.wait(120) == 0, proc.output()
        assert job.return_value() == 5, proc.output()
        assert "INFO asyncjobs.worker: worker " in proc.output()  # the asyncjobs engine ran it, not RQ's loop
    finally:
        proc.close()


def test_cli_defaults_are_worker_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """``asyncjobs-worker`` with no flags builds exactly ``WorkerConfig``'s defaults (one source of defaults)."""
    from asyncjobs.cli.worker import build_parser, config_from_args
    from asyncjobs.connection import DEFAULT_REDIS_URL, RedisTarget
    from asyncjobs.worker.config import DEFAULTS, WorkerConfig

    for var in ("REDIS_URL", "RQ_CONFIG", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_SSL"):
        monkeypatch.delenv(var, raising=False)
    args = build_parser().parse_args([])
    config = config_from_args(args)
    assert config == WorkerConfig(queues=("default",), name=config.name, redis=RedisTarget())
    assert config.redis_url == DEFAULTS["redis_url"] == RedisTarget().url == DEFAULT_REDIS_URL
    # Every WorkerConfig default the CLI has a flag for, flag by flag (dest -> field).
    flags = {"concurrency": "concurrency", "threads": "threads", "serializer": "serializer",
             "results_ttl": "default_result_ttl", "worker_ttl": "worker_ttl",
             "job_monitoring_interval": "job_monitoring_interval", "max_jobs": "max_jobs",
             "max_idle_time": "max_idle_time", "dequeue_strategy": "dequeue_strategy",
             "shutdown_timeout": "shutdown_timeout", "maintenance_interval": "maintenance_interval",
             "with_scheduler": "with_scheduler", "burst": "burst"}
    assert {dest: getattr(args, dest) for dest in flags} == {dest: DEFAULTS[f] for dest, f in flags.items()}
    help_text = build_parser().format_help()
    assert f"(default {DEFAULTS['concurrency']})" in help_text and DEFAULT_REDIS_URL in help_text


def test_settings_default_redis_url_is_the_worker_default() -> None:
    from asyncjobs.connection import DEFAULT_REDIS_URL
    from asyncjobs.delivery.settings import Settings

    assert Settings.model_fields["redis_url"].default == DEFAULT_REDIS_URL


def test_public_faces_are_the_batteries_objects() -> None:
    import asyncjobs.notifications
    import asyncjobs.queues
    import asyncjobs.tasks
    from asyncjobs.delivery import queues, tasks
    from asyncjobs.outbox import notifications

    assert asyncjobs.tasks.send_email is tasks.send_email and asyncjobs.tasks.send_sms is tasks.send_sms
    assert asyncjobs.queues.get_queue is queues.get_queue and asyncjobs.queues.QUEUE_NAMES == queues.QUEUE_NAMES
    for name in notifications.__all__:
        assert getattr(asyncjobs.notifications, name) is getattr(notifications, name), name
    assert sorted(asyncjobs.notifications.__all__) == sorted(notifications.__all__)


def test_new_enqueues_keep_the_old_job_names(sync_redis: redis.Redis) -> None:
    """RQ stores ``<__module__>.<__qualname__>``: the old path, which every worker version can import."""
    from asyncjobs.delivery.tasks import send_email, send_sms
    from asyncjobs.outbox.notifications import JOB_FUNCTION, process_outbox_notification

    q = Queue("emails", connection=sync_redis)
    assert q.enqueue(send_email, "a@example.com", "s", "b").func_name == "asyncjobs.tasks.send_email"
    assert q.enqueue(send_sms, "+353871234567", "b").func_name == "asyncjobs.tasks.send_sms"
    assert f"{process_outbox_notification.__module__}.{process_outbox_notification.__qualname__}" == JOB_FUNCTION
    assert JOB_FUNCTION == "asyncjobs.notifications.process_outbox_notification"
    assert pickle.loads(pickle.dumps(send_email)) is send_email  # pickled by reference, through the face


def test_jobs_under_the_old_dotted_paths_still_run(redis_url: str, sync_redis: redis.Redis) -> None:
    """A job enqueued by name with stock RQ (as jobs already in Redis are) runs, also under --allow-module."""
    q = Queue("emails", connection=sync_redis)
    by_name = q.enqueue("asyncjobs.tasks.send_email", "someone@example.com", "Hello", "Body")
    env = {"EMAIL_BACKEND": "console", "SMTP_RATE_LIMIT": "", "DELIVERY_MAX_ATTEMPTS": "1"}
    with run_asyncjobs_worker(redis_url, "emails", "--burst", "--allow-module", "asyncjobs.tasks", env=env) as proc:
        assert proc.wait(120) == 0, proc.output()
        output = proc.output()
    job = Job.fetch(by_name.id, connection=sync_redis)
    assert job.get_status() == "finished", output
    result = job.return_value()
    assert isinstance(result, dict) and result["backend"] == "console" and result["attempts"] == 1, result
    assert "emails: asyncjobs.tasks.send_email(to=[s***@example.com], subject=<5 chars>)" in output


def test_email_extra_alone_never_imports_the_sms_side() -> None:
    """With httpx and aiohttp unimportable (the ``email`` extra alone), email composition imports and sends."""
    code = """
import asyncio, sys
for name in ("httpx", "aiohttp", "httpx_aiohttp"):
    sys.modules[name] = None  # import raises ImportError, as when the package is not installed
import asyncjobs.queues, asyncjobs.tasks
from asyncjobs.delivery import runtime

result = asyncio.run(asyncjobs.tasks.send_email("someone@example.com", "Hi", "Body"))
assert result["backend"] == "console", result
try:
    asyncio.run(asyncjobs.tasks.send_sms("+353871234567", "code"))
except ImportError as exc:
    assert "asyncjobs-rq[sms]" in str(exc), exc
else:
    raise AssertionError("send_sms ran without the sms extra")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("httpx", "aiohttp", "httpx_aiohttp") and sys.modules[m])
print("ok", loaded)
"""
    env = {"EMAIL_BACKEND": "console", "PATH": "/usr/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []", out.stdout
