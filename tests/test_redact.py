"""Passwords in URLs never reach reprs."""

from __future__ import annotations

import pytest

from asyncjobs.delivery.settings import Settings
from asyncjobs.redact import redact_url
from asyncjobs.worker.config import WorkerConfig


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("rediss://user:s3cret@cache.example:6380/2", "rediss://user:***@cache.example:6380/2"),
        ("postgresql+asyncpg://app:s3cret@db/app", "postgresql+asyncpg://app:***@db/app"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_settings_and_worker_config_reprs_hide_url_passwords() -> None:
    s = Settings(redis_url="redis://:s3cret@h:6379/0", database_url="postgresql+asyncpg://u:pw9@h/db")
    assert "s3cret" not in repr(s) and "pw9" not in repr(s) and "s3cret" not in str(s)
    assert s.redis_url.endswith("s3cret@h:6379/0")  # the value itself is intact for use
    config = WorkerConfig(queues=("default",), redis_url="redis://:s3cret@h:6379/0")
    assert "s3cret" not in repr(config) and "redis://:***@h:6379/0" in repr(config)
