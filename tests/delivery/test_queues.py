from __future__ import annotations

import subprocess
import sys

import pytest
import redis
from rq import Queue

from asyncjobs.delivery.settings import get_settings
from tests.testsupport.workers import PROJECT_ROOT


def test_import_creates_no_connection() -> None:
    code = (
        "import asyncjobs.delivery.queues as q, asyncjobs.queues, asyncjobs.tasks, asyncjobs.delivery.runtime;"
        "assert q._connections == {} and q._queues == {};"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,  # this checkout's asyncjobs, first on sys.path
        env={"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin"},
        check=True,
    )
    assert out.stdout.strip() == "ok"


def test_named_queues_bound_to_redis_url(
    clean_env: pytest.MonkeyPatch, redis_url: str, sync_redis: redis.Redis
) -> None:
    import asyncjobs.queues as queues

    clean_env.setenv("REDIS_URL", redis_url)
    get_settings.cache_clear()
    queues.reset_queues()
    try:
        from asyncjobs.queues import emails_queue, sms_queue

        for name in queues.QUEUE_NAMES:
            q = getattr(queues, f"{name}_queue")
            assert isinstance(q, Queue) and q.name == name
            port = q.connection.connection_pool.connection_kwargs["port"]
            assert f":{port}" in redis_url
        assert queues.get_queue("emails") is emails_queue
        job = sms_queue.enqueue("asyncjobs.tasks.send_sms", "+353871234567", "x")
        assert sync_redis.lrange("rq:queue:sms", 0, -1) == [job.id.encode()]
        assert emails_queue.count == 0
        with pytest.raises(AttributeError):
            queues.nope_queue  # noqa: B018
    finally:
        queues.reset_queues()
        get_settings.cache_clear()
