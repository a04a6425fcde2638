"""Throwaway PostgreSQL databases on the test server, for tests and benchmarks."""

from __future__ import annotations

import os
from typing import Final

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

#: The server's admin URL (any database on it): ``LIENTHONG_TEST_DATABASE_URL``.
ADMIN_URL: Final = os.environ.get(
    "LIENTHONG_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def create_database(name: str) -> str:
    """Create the database ``name``; returns its SQLAlchemy URL."""
    admin_url = make_url(ADMIN_URL)
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False)


async def drop_database(name: str) -> None:
    """Drop ``name`` (connections still open to it are closed)."""
    admin = create_async_engine(make_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
