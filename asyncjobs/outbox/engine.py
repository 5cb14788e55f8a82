"""Create an async engine suited to the outbox (PostgreSQL or SQLite)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["async_database_url", "make_engine", "make_session_factory"]

#: How long a SQLite connection waits for another writer (seconds).
SQLITE_BUSY_TIMEOUT = 30.0


def async_database_url(url: str) -> str:
    """``postgres://`` (Heroku, Django's ``DATABASE_URL``) and a bare ``postgresql://`` mean PostgreSQL
    through the async driver, ``postgresql+asyncpg://``; any other URL is returned as given."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("postgres", "postgresql"):
        return f"postgresql+asyncpg://{rest}"
    return url


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """``create_async_engine`` with outbox-friendly defaults.

    SQLite gets a generous busy timeout and WAL journaling (readers do not
    block the writer), so several workers and a processor can share the file.
    The URL must name an async driver (``postgresql+asyncpg://``,
    ``sqlite+aiosqlite://``); ``postgres://`` and ``postgresql://`` get ``asyncpg``.
    """
    url = async_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.get_driver_name() != "aiosqlite":
            raise ValueError(
                f"outbox database URL uses driver {parsed.get_driver_name()!r}; use "
                "sqlite+aiosqlite:///path/to/file.db"
            )
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        engine = create_async_engine(url, connect_args=connect_args, **kwargs)
        if parsed.database not in (None, "", ":memory:"):

            @event.listens_for(engine.sync_engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() not in ("asyncpg", "psycopg"):
        raise ValueError(
            f"outbox database URL uses driver {parsed.get_driver_name()!r}, which is not async; use "
            "postgresql+asyncpg://user:password@host/dbname"
        )
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
