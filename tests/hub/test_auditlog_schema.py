"""The migrated schema holds the audit log's tables exactly as hub.auditlog.models declares
them (on SQLite and PostgreSQL), and the sequencer works on a migrated database."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from hub.auditlog import store
from hub.auditlog.models import LOG_TABLES
from hub.auditlog.sequencer import Sequencer
from hub.db import make_engine
from protocol.bundle import log_verifier
from protocol.checkpoint import open_checkpoint
from protocol.keys import SigningPrivateKey

from .test_auditlog_support import append_fetched

pytestmark = pytest.mark.asyncio
ORIGIN = "lienthong.hub/schema"


def _diff(connection: Connection) -> list[Any]:
    metadata = MetaData()
    for table in LOG_TABLES:
        table.to_metadata(metadata)
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    names = {t.name for t in LOG_TABLES}

    def ours(diff: Any) -> bool:
        items = diff if isinstance(diff, list) else [diff]
        for item in items:
            for part in item[1:]:
                name = getattr(part, "name", None)
                table = getattr(part, "table", None)
                if name in names or getattr(table, "name", None) in names or part in names:
                    return True
        return False

    return [d for d in compare_metadata(context, metadata) if ours(d)]


async def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_sequencer_on_a_migrated_database(database_url: str) -> None:
    key = SigningPrivateKey.generate()
    engine = make_engine(database_url)
    try:
        await append_fetched(engine, 12)
        assert await Sequencer(engine, key, ORIGIN).sequence_once() == 12
        async with engine.connect() as conn:
            latest = await store.latest_checkpoint(conn)
        assert latest is not None
        cp = open_checkpoint(latest.note.encode(), log_verifier(key.public_key(), ORIGIN))
        assert cp.size == 12
    finally:
        await engine.dispose()
