"""The cheap submission path: directory in one query, receipts handed over, who signs when.

On both back ends unless marked; the lock test needs PostgreSQL's advisory locks.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from hub import directory
from hub.auditlog.app import LOG_RUNTIME
from hub.auditlog.sequencer import LOCK_KEY
from hub.hubreceipts import sign_ready
from hub.models import HubReceiptPending, Organ, Packet
from hub.packets import QUIET_FANOUT
from protocol.packet import parse_envelope
from protocol.receipts import verify_hub_receipt

from .conftest import running_hub
from .helpers import (
    CHI_BO,
    PROVINCE,
    TAM_HONG,
    YEN_LAC,
    HubEnv,
    mailbox,
    make_office,
    seal,
    submit_batch,
    unb64,
    world,
)

pytestmark = pytest.mark.asyncio


async def test_a_receipt_signed_elsewhere_is_read_back(hub_env: HubEnv) -> None:
    """A submission waiting for its ``accepted`` receipt that another process (or the
    background loop) signed meanwhile finds it on the packet row: nothing is pending
    here for it, so only that read can give it."""
    w = await world(hub_env)
    sealed = [seal(w.province, [w.yen_lac], data=f"Thông báo {i}".encode()) for i in range(3)]
    results = await submit_batch(hub_env, w.province, sealed)
    ids = [parse_envelope(envelope).packet_id for envelope, _ in sealed]
    found = await hub_env.hub.signer.wait_accepted_many(ids, 2.0)
    assert found == {pid: unb64(r["receipt"]) for pid, r in zip(ids, results, strict=True)}


async def test_lookup_entries_of_the_asked_and_tree_above(hub_env: HubEnv) -> None:
    await world(hub_env)
    hub = hub_env.hub
    async with hub.sessions() as session:
        entries, tree = await directory.lookup(session, hub.entries, [CHI_BO, TAM_HONG, "NO.SUCH"])
    # Entries of the organs asked for only (verified), not of their ancestors.
    assert set(entries) == {CHI_BO, TAM_HONG}
    assert entries[CHI_BO].organ == CHI_BO
    # The tree reaches up to the root.
    assert tree.parent_of(CHI_BO) == YEN_LAC
    assert tree.parent_of(YEN_LAC) == PROVINCE
    assert tree.parent_of(PROVINCE) is None
    assert tree.parent_of(TAM_HONG) == PROVINCE


async def test_lookup_reads_the_directory_by_its_index(backend: str, hub_env: HubEnv) -> None:
    """The organs of a lookup are fetched through the primary key, not by hashing the
    tree's codes against the whole table: with 2,000 organs (analysed) and a batch's
    twenty-odd codes, PostgreSQL's plan of ``IN (recursive CTE)`` was a sequential scan
    of ``organs`` per submission batch."""
    if backend != "postgresql":
        pytest.skip("the plan asked about is PostgreSQL's")
    await world(hub_env)
    hub = hub_env.hub
    async with hub.engine.begin() as conn:
        await conn.execute(
            insert(Organ),
            [
                {
                    "code": f"BENCH.O{n:04d}",
                    "name": f"Văn phòng {n}",
                    "role": "office",
                    "level": "commune",
                    "parent": YEN_LAC,
                    "transports": "http",
                    "valid_from": 0,
                    "entry": os.urandom(900),
                    "updated_at": 0,
                }
                for n in range(2000)
            ],
        )
        await conn.execute(text("ANALYZE organs"))
        # A batch of submissions names a few dozen organs.
        asked = [CHI_BO, *(f"BENCH.O{n:04d}" for n in range(0, 2000, 100))]
        compiled = directory._AROUND.compile(dialect=conn.dialect)
        raw = await conn.get_raw_connection()
        plan = await raw.driver_connection.fetch(  # type: ignore[union-attr]
            f"EXPLAIN {compiled}", asked, directory.TREE_DEPTH_MAX
        )
    text_plan = "\n".join(row[0] for row in plan)
    assert "Seq Scan on organs" not in text_plan, text_plan
    async with hub.sessions() as session:
        entries, tree = await directory.lookup(session, hub.entries, [CHI_BO])
    assert set(entries) == {CHI_BO}
    assert tree.parent_of(YEN_LAC) == PROVINCE


async def test_every_receipt_of_a_batch_in_its_answer(hub_env: HubEnv) -> None:
    w = await world(hub_env)
    sealed = [seal(w.province, [w.yen_lac], data=f"Công văn {i}".encode()) for i in range(5)]
    results = await submit_batch(hub_env, w.province, sealed)
    hub_pub = hub_env.keys.hub.public_key()
    for (envelope, _), result in zip(sealed, results, strict=True):
        assert result["status"] == 200
        verify_hub_receipt(
            unb64(result["receipt"]), hub_pub, envelope=parse_envelope(envelope), kind="accepted"
        )
    # Handed over, and stored on the packet rows too.
    async with hub_env.hub.sessions() as session:
        receipts = (await session.scalars(select(Packet.hub_receipt))).all()
        pending = await session.scalar(select(func.count()).select_from(HubReceiptPending))
    assert len(receipts) == 5
    assert all(receipts)
    assert pending == 0


async def test_left_over_accepted_receipts_are_the_background_s(
    database_url: str, tmp_path: Path
) -> None:
    async with running_hub(database_url, tmp_path / "hub", receipt_wait=0) as env:
        w = await world(env)
        envelope, body = seal(w.province, [w.yen_lac])
        (result,) = await submit_batch(env, w.province, [(envelope, body)])
        assert result["status"] == 200
        assert result["receipt"] is None
        sequencer = env.app[LOG_RUNTIME].sequencer
        assert sequencer is not None
        await sequencer.sequence_once()
        hub = env.hub
        # Indexed but fresh: a submission's round would sign it, not the background pass.
        async with hub.sessions.begin() as session:
            fresh = await sign_ready(
                session,
                env.keys.hub,
                hub.notifier,
                not database_url.startswith("sqlite"),
                accepted_before=int(time.time()) - 1,
            )
            assert fresh.packet_ids == []
            # Nor a round of another packet's submission.
            other = await sign_ready(
                session,
                env.keys.hub,
                hub.notifier,
                not database_url.startswith("sqlite"),
                only=[b"\x00" * 16],
            )
            assert other.packet_ids == []
        # Left over after a second or two: the background loop signs it (this pass, or its
        # own task's meanwhile).
        await asyncio.sleep(2.1)
        await hub.signer.run_once()
        async with hub.sessions() as session:
            raw = await session.scalar(select(Packet.hub_receipt))
        assert raw is not None
        verify_hub_receipt(
            raw, env.keys.hub.public_key(), envelope=parse_envelope(envelope), kind="accepted"
        )


async def test_round_waits_for_another_process_sequencer(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    async with running_hub(database_url, tmp_path / "hub", receipt_wait=10) as env:
        w = await world(env)
        signer = env.hub.signer
        waited: list[float] = []
        original = signer._await_other_sequencer

        async def spy() -> None:
            await original()
            waited.append(time.monotonic())

        signer._await_other_sequencer = spy  # type: ignore[method-assign]
        other = create_async_engine(database_url)
        try:
            async with other.connect() as conn, conn.begin():
                # "Another process" sequencing: holds the lock for a while.
                assert await conn.scalar(select(func.pg_try_advisory_xact_lock(LOCK_KEY)))
                task = asyncio.create_task(
                    submit_batch(env, w.province, [seal(w.province, [w.yen_lac])])
                )
                await asyncio.sleep(0.5)
                assert not task.done()
                released = time.monotonic()
            (result,) = await task
        finally:
            await other.dispose()
        assert result["status"] == 200
        assert result["receipt"] is not None
        # The round waited for that batch to commit (rather than polling until a deadline).
        assert waited
        assert waited[0] >= released


async def test_fanout_wakes_its_recipients_after_the_receipt(hub_env: HubEnv) -> None:
    province = await make_office(hub_env, PROVINCE, "Văn phòng Tỉnh ủy", level="province")
    offices = [
        await make_office(hub_env, f"000.00.{n:02d}.H41", f"Đảng ủy xã {n}", parent=PROVINCE)
        for n in range(1, QUIET_FANOUT + 1)
    ]
    # Two of them are waiting in long-polls when the directive arrives.
    polls = [asyncio.create_task(mailbox(hub_env, o, wait=20)) for o in offices[:2]]
    await asyncio.sleep(0.3)
    envelope, body = seal(province, offices)
    started = time.monotonic()
    (result,) = await submit_batch(hub_env, province, [(envelope, body)])
    assert result["status"] == 200
    assert result["receipt"] is not None
    for poll in polls:
        (item,) = await asyncio.wait_for(poll, 10)
        assert item["packet_id"] == result["packet_id"]
    assert time.monotonic() - started < 10  # woken, not found by a re-check
    for office in offices:
        assert len(await mailbox(hub_env, office)) == 1
