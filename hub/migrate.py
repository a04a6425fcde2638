"""Applying the Alembic migrations in ``hub/migrations`` to the hub's database.

Run by ``serve`` on start and by ``lienthong-hub migrate``.  Several hub processes may
start at once on one PostgreSQL: a transaction-scoped advisory lock lets one migrate
while the others wait and then find nothing to do.  On SQLite the transaction's
``BEGIN IMMEDIATE`` (see :mod:`hub.db`) serialises them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

SCRIPT_LOCATION: Final = str(Path(__file__).resolve().parent / "migrations")
#: Any constant: the advisory lock key that serialises migrations across processes.
_LOCK_KEY: Final = 0x4C54_4D49  # "LTMI"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (the newest by default)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
