"""Outbox fixtures: the same tests run on SQLite (a tmp file) and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from asyncjobs.outbox.engine import make_engine, make_session_factory
from asyncjobs.outbox.repository import create_all, drop_all
from tests.testsupport.smtp_server import SmtpTestServer


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('outbox') / 'outbox.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def is_postgres(db_url: str) -> bool:
    return db_url.startswith("postgresql")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(db_url)
    await drop_all(eng)  # the PostgreSQL database is shared by the session's tests
    await create_all(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_session_factory(engine)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as server:
        yield server
