"""Fixtures for the hub's API tests: a real database on each back end and a running hub.

* PostgreSQL: one database per xdist worker and test session (``lt_hub_<worker>_<random>``
  on the server of ``LIENTHONG_TEST_DATABASE_URL``), migrated once and dropped at the end;
  each test starts from empty tables (far cheaper than a database per test).
* SQLite: a migrated template file per session, copied for each test.

``hub_env`` runs the real application (``create_app``) in aiohttp's test server on an
ephemeral port, with its sequencer and background tasks, and a client for it.  These
fixtures are opt-in: the audit log's own tests keep their fixtures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from hub.app import create_app
from hub.db import Base, make_engine
from hub.hubkeys import create_keys
from hub.migrate import upgrade
from hub.settings import load_settings
from tests.databases import create_database, drop_database

from .helpers import HubEnv

BACKENDS = ("sqlite", "postgresql")
T = TypeVar("T")


async def create_pg(name: str) -> str:
    """A fresh database migrated to head; returns its URL."""
    url = await create_database(name)
    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return url


async def drop_pg(name: str) -> None:
    await drop_database(name)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a thread of its own (a loop may be running here)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def unique_name(prefix: str, worker_id: str) -> str:
    return f"{prefix}_{worker_id}_{uuid.uuid4().hex[:10]}".lower()


@pytest.fixture(scope="session")
def pg_database(worker_id: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this worker's session; dropped afterwards."""
    name = unique_name("lt_hub", worker_id)
    url = run_sync(create_pg(name))
    try:
        yield url
    finally:
        run_sync(drop_pg(name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "hub.sqlite3"

    async def migrate() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    run_sync(migrate())
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def empty_tables(url: str) -> None:
    """Delete every row (children first): on a handful of rows far faster than TRUNCATE."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                await conn.execute(table.delete())
    finally:
        await engine.dispose()


@pytest_asyncio.fixture
async def database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """An empty, migrated database of ``backend`` for this test."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "hub.sqlite3"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url: str = request.getfixturevalue("pg_database")
    await empty_tables(url)
    yield url


def hub_settings(data: Path, url: str, **overrides: Any) -> Any:
    return load_settings(
        data,
        database_url=url,
        migrate_on_start=False,
        receipt_wait=overrides.pop("receipt_wait", 5.0),
        **overrides,
    )


@pytest_asyncio.fixture
async def hub_env(database_url: str, tmp_path: Path) -> AsyncIterator[HubEnv]:
    """The hub running in-process on an ephemeral port, with a client."""
    async with running_hub(database_url, tmp_path / "hub") as env:
        yield env


class running_hub:
    """``async with running_hub(url, data, **settings) as env``: a hub and a client."""

    def __init__(self, url: str, data: Path, *, hybrid: bool = False, **overrides: Any) -> None:
        self.url = url
        self.data = data
        self.hybrid = hybrid
        self.overrides = overrides

    async def __aenter__(self) -> HubEnv:
        keys = create_keys(self.data, hybrid=self.hybrid)
        settings = hub_settings(self.data, self.url, **self.overrides)
        app = create_app(settings)
        self.server = TestServer(app)
        await self.server.start_server()
        self.client = TestClient(self.server)
        await self.client.start_server()
        return HubEnv(client=self.client, app=app, settings=settings, keys=keys)

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.close()
