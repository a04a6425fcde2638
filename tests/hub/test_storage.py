"""Storage pieces on their own: blob store, settings, migrations, retention."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Column,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    select,
    tuple_,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.blobs import BlobStore
from hub.db import Base, in_list, make_engine, read_engine, read_rows, run
from hub.migrate import current_revision, head_revision, upgrade
from hub.models import DeliveryRow, Packet
from hub.retention import ORPHAN_MAX_AGE, TEMP_MAX_AGE, collect_garbage
from hub.settings import load_settings
from protocol.errors import LocalError
from protocol.policy import Secrecy

from .helpers import HubEnv, eventually, login, mailbox, send, world


def test_blob_store_write_commit_range_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(3 * 1024 * 1024 + 7)
    writer = store.writer()
    for i in range(0, len(data), 100_000):
        writer.write(data[i : i + 100_000])
    digest = writer.commit(hashlib.sha256(data).digest())
    assert digest == hashlib.sha256(data).digest()
    path = store.path_for(digest)
    assert path.parent.parent.name == digest.hex()[:2]
    assert path.parent.name == digest.hex()[2:4]
    assert store.size(digest) == len(data)
    with store.open(digest) as fh:
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010]
    assert list(store.digests()) == [digest]
    # The same content again keeps the first copy and leaves no temp file.
    again = store.writer()
    again.write(data)
    assert again.commit() == digest
    assert not list((store.root / "tmp").iterdir())
    # A mismatch or an abort leaves nothing.
    bad = store.writer()
    bad.write(b"khong khop")
    with pytest.raises(LocalError):
        bad.commit(bytes(32))
    aborted = store.writer()
    aborted.write(b"dang ghi")
    aborted.abort()
    assert not list((store.root / "tmp").iterdir())
    assert store.delete(digest)
    assert not store.delete(digest)
    assert store.size(digest) is None


def test_blob_store_sweeps_stale_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer()
    writer.write(b"x")
    old = writer.temp_path.stat().st_mtime
    assert store.sweep_temp(TEMP_MAX_AGE, now=old + 10) == 0
    assert store.sweep_temp(TEMP_MAX_AGE, now=old + TEMP_MAX_AGE + 1) == 1
    writer.abort()


def test_settings_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    settings = load_settings(data)
    assert settings.database_url == f"sqlite+aiosqlite:///{data / 'hub.sqlite3'}"
    assert settings.blobs_path == data / "blobs"
    assert settings.token_lifetime == 900
    assert settings.challenge_lifetime == 60
    assert settings.envelope_max == 4 * 1024 * 1024
    assert settings.body_max == 2 * 1024**3
    assert settings.secrecy_policy().allowed == frozenset({Secrecy.NONE})
    (data / "hub.toml").write_text(
        'port = 9000\nretention_days = 30\nsecrecy_allowed = ["none", "mat"]\n'
    )
    settings = load_settings(data)
    assert (settings.port, settings.retention_days) == (9000, 30)
    assert Secrecy.MAT in settings.secrecy_policy().allowed
    monkeypatch.setenv("LIENTHONG_PORT", "9100")
    assert load_settings(data).port == 9100
    assert load_settings(data, port=9200).port == 9200
    # Tối mật can never be allowed; unknown keys and bad values are refused.
    for text in (
        'secrecy_allowed = ["toi-mat"]\n',
        "no_such_setting = 1\n",
        'route_rules = ["cousins"]\n',
    ):
        (data / "hub.toml").write_text(text)
        with pytest.raises(LocalError):
            load_settings(data)


@pytest.mark.asyncio
async def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade(engine)  # already at head: nothing to do, no error
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


@pytest.mark.asyncio
async def test_in_list_one_statement_whatever_the_count(database_url: str) -> None:
    """``in_list`` selects the rows an ``IN`` would, for 0, 1 and many values; on
    PostgreSQL it is one statement (an array parameter) whatever the number of values."""
    engine = make_engine(database_url)
    ids = [os.urandom(16) for _ in range(40)]
    table = Table("in_list_probe", MetaData(), Column("id", LargeBinary(16), primary_key=True))
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "in_list_probe" in statement and statement.lstrip().startswith("SELECT"):
            sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    query = select(table.c.id).where(in_list(table.c.id, "ids"))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.create)
            await conn.execute(table.insert(), [{"id": i} for i in ids[:30]])
            for wanted in ([], ids[:1], ids[5:25], ids[25:40], ids):
                got = {bytes(r[0]) for r in await conn.execute(query, {"ids": wanted})}
                assert got == set(wanted) & set(ids[:30])
            await conn.run_sync(table.drop)
    finally:
        await engine.dispose()
    assert len(sent) == 5
    if engine.dialect.name == "postgresql":
        assert len(set(sent)) == 1
        assert "= ANY (" in sent[0]
    else:
        assert all(" IN (" in s for s in sent)


@contextlib.asynccontextmanager
async def _probe_table(
    database_url: str, name: str, *columns: Column[Any]
) -> AsyncIterator[tuple[AsyncEngine, Table, list[str]]]:
    """A table of its own on a fresh engine, dropped afterwards, and the statements naming
    it that go through SQLAlchemy's execution (recorded from the start)."""
    engine = make_engine(database_url)
    meta = MetaData()
    table = Table(name, meta, *columns)
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if name in statement:
            sent.append(statement)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        yield engine, table, sent
    finally:
        if event.contains(engine.sync_engine, "before_cursor_execute", record):
            event.remove(engine.sync_engine, "before_cursor_execute", record)
        async with engine.begin() as conn:
            await conn.run_sync(meta.drop_all)
        await engine.dispose()


@pytest.mark.asyncio
async def test_read_rows_gives_what_sqlalchemy_gives(database_url: str) -> None:
    """``read_rows`` on a reader connection returns the rows SQLAlchemy returns, by column
    name (literal values, a list, a limit, NULL, bytes, Vietnamese text); on PostgreSQL
    without going through SQLAlchemy's execution."""
    names = ["Hồng Lạc", unicodedata.normalize("NFD", "Hồng Lạc"), "Yên Lạc"]
    async with _probe_table(
        database_url,
        "read_rows_probe",
        Column("id", BigInteger, primary_key=True),
        Column("kind", String(16)),
        Column("name", String(64)),
        Column("data", LargeBinary, nullable=True),
    ) as (engine, table, sent):
        query = (
            select(table.c.id, table.c.name, table.c.data)
            .where(table.c.kind == "envelope", in_list(table.c.id, "ids"))
            .order_by(table.c.id)
            .limit(bindparam("limit"))
        )
        async with engine.begin() as conn:
            await conn.execute(
                table.insert(),
                [
                    {"id": i, "kind": "envelope" if i % 2 else "receipt", "name": names[i % 3],
                     "data": os.urandom(i) if i % 3 else None}
                    for i in range(1, 13)
                ],
            )  # fmt: skip
        params = {"ids": [1, 2, 3, 5, 9, 11, 40], "limit": 4}
        async with read_engine(engine).connect() as conn:
            expected = [dict(r._mapping) for r in await conn.execute(query, params)]
            sent.clear()
            got = [dict(r) for r in await read_rows(conn, query, params)]
            again = await read_rows(conn, query, {"ids": [], "limit": 4})
        assert got == expected
        assert [r["id"] for r in got] == [1, 3, 5, 9]
        assert got[1]["data"] is None
        assert got[0]["name"] == names[1]
        assert list(again) == []
        assert len(sent) == (0 if engine.dialect.name == "postgresql" else 2)


@pytest.mark.asyncio
async def test_run_writes_in_the_callers_transaction(database_url: str) -> None:
    """``run`` executes prebuilt statements inside the caller's transaction (a rollback
    undoes them, even when ``run`` sent the first statement), gives rows, row counts and
    SQLAlchemy's IntegrityError, and leaves to SQLAlchemy what needs its conversions; on
    PostgreSQL without going through SQLAlchemy's execution."""
    names = ["Hồng Lạc", unicodedata.normalize("NFD", "Hồng Lạc"), "Yên Lạc"]
    rows = [
        {"id": i, "name": names[i % 3], "data": os.urandom(i) if i % 2 else None, "seen": i}
        for i in range(1, 6)
    ]
    async with _probe_table(
        database_url,
        "run_probe",
        Column("id", BigInteger, primary_key=True),
        Column("name", String(64)),
        Column("data", LargeBinary, nullable=True),
        Column("seen", BigInteger, nullable=False, default=7),
    ) as (engine, table, sent):
        add = table.insert()
        rename = table.update().where(in_list(table.c.id, "ids")).values(name=bindparam("new"))
        rename_four = table.update().where(table.c.id == 4).values(name=bindparam("new"))
        take = (
            table.delete()
            .where(table.c.id == bindparam("id"))
            .returning(table.c.id, table.c.name, table.c.data)
        )
        listed = select(table.c.id, table.c.name, table.c.data).order_by(table.c.id)
        async with engine.begin() as conn:
            assert (await run(conn, add, rows)).rowcount == 5
            assert (await run(conn, rename, {"ids": [2, 3, 40], "new": names[2]})).rowcount == 2
            # An expanding IN (a list of pairs) is SQLAlchemy's to render.
            pairs = select(table.c.id).where(
                tuple_(table.c.id, table.c.name).in_(bindparam("pairs", expanding=True))
            )
            assert (await run(conn, pairs, {"pairs": [(2, names[2]), (3, "x")]})).scalars() == [2]
            # A value bound in the statement itself (id 4) beside one given at the call.
            assert (await run(conn, rename_four, {"new": "Tư"})).rowcount == 1
            gone = await run(conn, take, {"id": 5})
            assert [tuple(r) for r in gone] == [(5, names[2], rows[4]["data"])]
            got = await run(conn, listed)
        assert [tuple(r) for r in got] == [
            (1, names[1], rows[0]["data"]),
            (2, names[2], None),
            (3, names[2], rows[2]["data"]),
            (4, "Tư", None),
        ]
        assert got.scalars() == [1, 2, 3, 4]
        assert got.scalar() == 1
        assert len(got) == 4
        assert len(sent) == (1 if engine.dialect.name == "postgresql" else 6)

        # Written by run as the transaction's first statement, then rolled back: gone.
        async def abandoned() -> None:
            async with engine.begin() as conn:
                await run(conn, add, {"id": 9, "name": "x", "data": None, "seen": 0})
                raise RuntimeError("abandon")

        with pytest.raises(RuntimeError):
            await abandoned()

        # A duplicate key: SQLAlchemy's error, and the transaction rolls back.
        async def duplicate() -> None:
            async with engine.begin() as conn:
                await run(conn, add, {"id": 10, "name": "x", "data": None, "seen": 0})
                await run(conn, add, {"id": 1, "name": "x", "data": None, "seen": 0})

        with pytest.raises(IntegrityError):
            await duplicate()
        # A Python-side column default (seen): through SQLAlchemy, which fills it in.
        sent.clear()
        async with engine.begin() as conn:
            await run(conn, add, {"id": 11, "name": "mặc định", "data": None})
        assert len(sent) == 1
        async with engine.connect() as conn:
            ids = (await conn.execute(select(table.c.id, table.c.seen))).all()
        assert sorted(ids) == [(1, 1), (2, 2), (3, 3), (4, 4), (11, 7)]


@pytest.mark.asyncio
async def test_retention_deletes_bodies_only_when_fetched_and_old(hub_env: HubEnv) -> None:
    env = hub_env
    hub = env.hub
    w = await world(env)
    _answer, _envelope, body = await send(env, w.province, [w.yen_lac, w.tam_hong])
    digest = hashlib.sha256(body).digest()
    later = int(time.time()) + hub.settings.retention_seconds + 10
    # Not everyone has fetched it: kept, however old.
    assert (await collect_garbage(hub, now=later)).bodies_deleted == 0
    for office in (w.yen_lac, w.tam_hong):
        await login(env, office)  # that pass also purged the sessions, expired by then
        item = (await mailbox(env, office))[0]
        resp = await env.client.get(item["body"]["url"], headers=office.headers)
        assert await resp.read() == body

    async def all_fetched() -> bool:
        async with hub.sessions() as session:
            rows = (await session.scalars(select(DeliveryRow.fetched_at))).all()
        return all(rows)

    assert await eventually(all_fetched)
    # Everyone fetched, but the retention period has not passed.
    assert (await collect_garbage(hub)).bodies_deleted == 0
    assert hub.blobs.exists(digest)
    report = await collect_garbage(hub, now=later)
    assert report.bodies_deleted == 1
    assert not hub.blobs.exists(digest)
    async with hub.sessions() as session:
        packet = (await session.scalars(select(Packet))).one()
    assert packet.body_deleted_at == later
    assert packet.state == "accepted"
    await login(env, w.yen_lac)
    resp = await env.client.get(f"/v1/bodies/{digest.hex()}", headers=w.yen_lac.headers)
    assert (resp.status, (await resp.json())["code"]) == (404, "body_unknown")
    # An orphan blob (no packet names it) goes once old enough.
    orphan = hub.blobs.writer()
    orphan.write(b"mo coi")
    orphan_digest = orphan.commit()
    assert (await collect_garbage(hub)).orphans == 0
    report = await collect_garbage(hub, now=int(later + ORPHAN_MAX_AGE * 2))
    assert report.orphans == 1
    assert not hub.blobs.exists(orphan_digest)
