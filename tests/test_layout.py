"""Issue 12, layout: public names that moved keep working at their old paths.

``AsyncWorker`` lives with the worker (``asyncjobs.worker.rq_compat``); ``asyncjobs.AsyncWorker``
is the public name and ``asyncjobs.cli.rq_compat.AsyncWorker`` the old path, both the same class.
"""

from __future__ import annotations

import pytest
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


def test_cli_defaults_are_worker_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """``asyncjobs-worker`` with no flags builds exactly ``WorkerConfig``'s defaults (one source of defaults)."""
    from asyncjobs.cli.worker import build_parser, config_from_args
    from asyncjobs.worker.config import DEFAULTS, WorkerConfig
    from asyncjobs.worker.connection import DEFAULT_REDIS_URL, RedisTarget

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
    from asyncjobs.settings import Settings
    from asyncjobs.worker.connection import DEFAULT_REDIS_URL

    assert Settings.model_fields["redis_url"].default == DEFAULT_REDIS_URL
