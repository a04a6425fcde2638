"""Helpers shared by the audit-log tests (no tests here).

Each test gets an empty log: a SQLite file in ``tmp_path``, or, on PostgreSQL, freshly
created log tables in a uniquely named database that each test module creates on the
server of ``LIENTHONG_TEST_DATABASE_URL`` and drops at its end -- so the tests are safe
under ``pytest -n`` and do not pay a CREATE DATABASE each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from hub.auditlog import append_event
from hub.auditlog.models import LOG_TABLES
from hub.db import Base, make_engine, make_sessionmaker
from tests.databases import create_database, drop_database

BACKENDS = ("sqlite", "postgresql")
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in a thread of its own (module fixtures have no event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def module_database() -> Iterator[str]:
    """A PostgreSQL database for one test module: yields its URL, drops it afterwards."""
    name = f"lt_auditlog_{uuid.uuid4().hex[:16]}"
    url = _run(create_database(name))
    try:
        yield url
    finally:
        _run(drop_database(name))


async def reset_log_tables(url: str) -> None:
    """Drop and recreate the log's tables: an empty log for the next test."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: Base.metadata.drop_all(c, tables=list(LOG_TABLES)))
            await conn.run_sync(lambda c: Base.metadata.create_all(c, tables=list(LOG_TABLES)))
    finally:
        await engine.dispose()


@asynccontextmanager
async def empty_log(backend: str, tmp_path: Path, pg_url: str | None) -> AsyncIterator[str]:
    """The URL of an empty log: a new SQLite file, or the module's PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / f'log-{uuid.uuid4().hex[:8]}.sqlite3'}"
        return
    assert pg_url is not None
    await reset_log_tables(pg_url)
    yield pg_url


async def create_log_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: Base.metadata.create_all(c, tables=list(LOG_TABLES)))


@asynccontextmanager
async def log_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the audit log's tables created."""
    engine = make_engine(url)
    try:
        await create_log_tables(engine)
        yield engine
    finally:
        await engine.dispose()


def packet_id(n: int) -> bytes:
    """A deterministic 16-byte packet id for test number ``n``."""
    return n.to_bytes(16, "big")


async def append_fetched(
    engine: AsyncEngine, count: int, *, organ: str = "000.00.00.H41", packets: Sequence[bytes] = ()
) -> None:
    """Append ``count`` ``body_fetched`` events (ids from ``packets`` in turn, else unique)."""
    maker = make_sessionmaker(engine)
    async with maker.begin() as session:
        for i in range(count):
            pid = packets[i % len(packets)] if packets else uuid.uuid4().bytes
            await append_event(
                session,
                "body_fetched",
                1_750_000_000 + i,
                packet_id=pid,
                envelope_digest=bytes(32),
                organ=organ,
            )
