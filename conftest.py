"""Fixtures shared by tests/ and compat/: real Redis and PostgreSQL.

Each pytest(-xdist) worker starts its own private redis-server on a free
loopback port, so suites run in parallel without touching anyone else's data.
Set ASYNCJOBS_TEST_REDIS_URL to use an existing server instead (its DB is
flushed before every test, so point it at a DB nobody else uses).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import redis

from tests.testsupport.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    if os.environ.get("ASYNCJOBS_TEST_REDIS_URL"):
        yield None
        return
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer | None) -> Iterator[str]:
    url = os.environ.get("ASYNCJOBS_TEST_REDIS_URL") or (redis_server.url if redis_server else "")
    if redis_server is not None:
        redis_server.start()  # a test may have stopped it
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    conn.close()
    yield url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped at session end."""
    from tests.testsupport.postgres import create_database, drop_database

    try:
        name, url = asyncio.run(create_database())
    except OSError as exc:  # pragma: no cover - machine without PostgreSQL
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}; start it (see README)")
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))
