"""Fixtures for the e-mail tests: the hub's database fixtures, a relay, Dovecot.

The database fixtures are the hub tests' own (one PostgreSQL database per worker and
session, dropped afterwards; a migrated SQLite template copied per test), imported here
so that every e-mail test runs on both back ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.hub.conftest import (  # noqa: F401 - fixtures, registered by import
    backend,
    database_url,
    pg_database,
    sqlite_template,
)

from .servers import Dovecot, Relay, dovecot_binary


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[Relay]:
    """An aiosmtpd relay on a free port, in this test's event loop."""
    r = await Relay().start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture(scope="session")
def dovecot_exe() -> str:
    binary, why = dovecot_binary()
    if binary is None:
        pytest.skip(f"Dovecot cannot be installed here (scripts/ensure-dovecot.sh): {why}")
    return binary


@pytest.fixture
def dovecot(dovecot_exe: str) -> Iterator[Dovecot]:
    """A fresh unprivileged Dovecot with no users yet (``add_user``)."""
    with Dovecot(dovecot_exe) as server:
        yield server


@pytest.fixture
def hub_data(tmp_path: Path) -> Path:
    return tmp_path / "hub"
