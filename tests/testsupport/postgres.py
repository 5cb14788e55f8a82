"""A throw-away PostgreSQL database per test session on the machine's server."""

from __future__ import annotations

import os
import uuid

import asyncpg  # type: ignore[import-untyped]

ADMIN_DSN = os.environ.get("ASYNCJOBS_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database(prefix: str = "asyncjobs_test") -> tuple[str, str]:
    """Create a fresh database; return (name, SQLAlchemy asyncpg URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
