"""The auditor against a real hub (SQLite and PostgreSQL): an honest history verifies
completely, and each way of editing the hub's database behind its back is caught, with a
message that says what was found."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, text

from hub.auditlog.models import LogEntry
from nodes.auditor import AuditAlarm
from nodes.errors import NodeError
from protocol.checkpoint import parse_note
from protocol.evidence import verify_proof
from protocol.policy import VN_TZ
from tests.hub.helpers import HubEnv, Office, log_kinds, login, post_receipts

from .helpers import (
    Auditors,
    cosign_as,
    entries,
    forged_receipt,
    history,
    index_of,
    rewrite_history,
    rewritten_receipt,
    sql,
    swap_key,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def auditors(hub_env: HubEnv, tmp_path: Path) -> Iterator[Auditors]:
    made = Auditors(hub_env, tmp_path)
    try:
        yield made
    finally:
        made.close()


async def test_an_honest_history_verifies_completely(hub_env: HubEnv, auditors: Auditors) -> None:
    env = hub_env
    h = await history(env)
    auditor = auditors.make(h.w.auditor)
    async with auditor:
        first = await auditor.checkpoint()
        assert first["previous_size"] is None
        assert first["cosigned"]
        traced = await auditor.trace(h.packet)
        assert traced["alarms"] == []
        assert traced["complete"] is True
        kinds = [e["kind"] for e in traced["events"]]
        assert kinds == ["packet_accepted", "body_fetched", "receipt", "receipt"]
        assert [e["signature"] for e in traced["events"] if e["kind"] == "receipt"] == [
            "verified",
            "verified",
        ]
        assert traced["envelope"]["sender_signature"] == "verified"
        assert traced["envelope"]["reference"]["notation"] == "KH/TU"
        by_organ = {d["recipient"]: d for d in traced["deliveries"]}
        assert by_organ[h.w.yen_lac.code]["state"] == "03"
        assert by_organ[h.w.yen_lac.code]["incoming_number"] == "125"
        assert by_organ[h.w.tam_hong.code]["state"] == "pending"
        # the saved proof verifies offline with the pinned keys alone
        proof = await asyncio.to_thread(Path(traced["proof_file"]).read_bytes)
        verified = verify_proof(
            proof, hub_key=env.keys.hub.public_key(), authority=env.keys.authority.public_key()
        )
        assert len(verified.receipts) == 2

        # without a mirror: the hub's own list of directory events (each proven) still
        # verifies every receipt; only completeness is left unchecked
        quick = auditors.make(h.w.auditor, name="quick")
        async with quick:
            light = await quick.trace(h.packet, follow=False)
        assert light["complete"] is None
        assert light["alarms"] == []
        assert light["receipts_verified"] == 2
        assert quick.store.mirror_size() == 0

        replayed = await auditor.replay()
        assert replayed["alarms"] == []
        assert replayed["receipts_failed"] == 0
        assert replayed["entries"] == replayed["size"]

        round_ = await auditor.monitor_round()
        assert round_["alarms"] == []
        enrolled = {c["organ"] for c in round_["directory_changes"]}
        assert {h.w.province.code, h.w.yen_lac.code, h.w.auditor.code} <= enrolled

        today = datetime.now(VN_TZ).date()
        report = auditor.report(today - timedelta(days=1), today, None, int(time.time()))
        rows = {r["organ"]: r for r in report["rows"]}
        assert rows[h.w.province.code]["sent"] == 1
        assert rows[h.w.yen_lac.code]["registered"] == 1
        assert rows[h.w.yen_lac.code]["received"] == 1
        assert rows[h.w.tam_hong.code]["received"] == 0
        # the due date was yesterday: Yên Lạc registered but never completed, Tam Hồng
        # did nothing -- both late, both still open
        assert rows[h.w.tam_hong.code]["overdue"] == 1
        assert rows[h.w.yen_lac.code]["late"] == 1
        late = auditor.overdue(int(time.time()))
        assert {r.recipient for r in late} == {h.w.yen_lac.code, h.w.tam_hong.code}


async def test_an_entry_changed_is_caught(hub_env: HubEnv, auditors: Auditors) -> None:
    env = hub_env
    h = await history(env)
    auditor = auditors.make(h.w.auditor)
    async with auditor:
        await auditor.checkpoint()
        await auditor.follow()
        idx = await index_of(env, "receipt", status="03")
        data = dict(await entries(env))[idx]
        await sql(
            env,
            text("UPDATE log_entries SET data = :d WHERE idx = :i"),
            {"d": rewritten_receipt(h.w.yen_lac, data, "06"), "i": idx},
        )
        with pytest.raises(AuditAlarm) as caught:
            await auditor.trace(h.packet)
        assert caught.value.code == "proof_invalid"
        assert f"entry {idx} (the receipt 06 of {h.w.yen_lac.code})" in caught.value.detail
        assert "is not in the signed log" in caught.value.detail
        with pytest.raises(AuditAlarm) as caught:
            await auditor.replay()
        assert caught.value.code == "log_entry_mismatch"
        assert caught.value.detail.startswith(f"entry {idx}, as the hub serves it now")
    # a fresh auditor, who never saw the honest entry, is caught up the same way
    fresh = auditors.make(h.w.auditor, name="fresh")
    async with fresh:
        with pytest.raises(AuditAlarm) as caught:
            await fresh.monitor_round()
        assert caught.value.code == "log_entry_mismatch"
        assert caught.value.evidence["index"] == idx


async def test_an_entry_removed_is_caught(hub_env: HubEnv, auditors: Auditors) -> None:
    env = hub_env
    h = await history(env)
    auditor = auditors.make(h.w.auditor)
    async with auditor:
        await auditor.checkpoint()
        await auditor.follow()
        idx = await index_of(env, "receipt", status="01")
        await sql(env, delete(LogEntry).where(LogEntry.idx == idx))
        traced = await auditor.trace(h.packet)
        codes = [a["code"] for a in traced["alarms"]]
        assert "bundle_incomplete" in codes, traced["alarms"]
        incomplete = next(a for a in traced["alarms"] if a["code"] == "bundle_incomplete")
        assert incomplete["missing"] == [idx]
        assert traced["complete"] is False
        with pytest.raises(AuditAlarm) as caught:
            await auditor.replay()
        assert caught.value.code == "log_entry_unavailable"
        assert f"cannot serve entry {idx} " in caught.value.detail


async def test_a_receipt_rewritten_with_the_hubs_key_is_caught(
    hub_env: HubEnv, auditors: Auditors
) -> None:
    """The operator rewrites Tam Hồng's silence into nothing and Yên Lạc's 03 into a 02
    rejection, recomputes the tree and re-signs the checkpoint with the hub's own key: the
    auditor who saw the honest checkpoint catches the fork; the receipt's office signature
    catches it for anyone else."""
    env = hub_env
    h = await history(env)
    auditor = auditors.make(h.w.auditor)
    async with auditor:
        honest = await auditor.checkpoint()
        idx = await index_of(env, "receipt", status="03")
        data = dict(await entries(env))[idx]
        await sql(env, text("UPDATE delivery_events SET status = '06' WHERE status = '03'"))
        forged = await rewrite_history(env, {idx: rewritten_receipt(h.w.yen_lac, data, "06")})
        with pytest.raises(AuditAlarm) as caught:
            await auditor.checkpoint()
        alarm = caught.value
        assert alarm.code == "checkpoint_inconsistent"
        assert "two different roots for the same tree size" in alarm.detail
        assert alarm.evidence["previous"] == honest["note"]
        assert alarm.evidence["current"] == forged.decode()
    fresh = auditors.make(h.w.auditor, name="fresh")
    async with fresh:
        await fresh.checkpoint()  # first use: nothing to compare with yet
        with pytest.raises(AuditAlarm) as caught:
            await fresh.trace(h.packet)
        assert caught.value.code == "signature_invalid"
        assert caught.value.detail.startswith(f"packet {h.packet}: ")
        # its mirror recorded why: the logged receipt is not what Yên Lạc signed
        failed = fresh.store.failed_receipts()
        assert [int(r["idx"]) for r in failed] == [idx]
        assert "signature_invalid" in failed[0]["receipt_error"]


async def test_a_key_swapped_in_the_directory_is_caught(
    hub_env: HubEnv, auditors: Auditors
) -> None:
    """The operator signs a new entry for Yên Lạc with a key of its own (the authority key
    is on the hub), swaps it into the tables without logging it, logs in as Yên Lạc and
    posts a forged "06 completed" -- which the hub logs.  ``trace`` sees the served entry
    is not in the log and the receipt not signed by a logged key; ``monitor`` sees both."""
    env = hub_env
    h = await history(env)
    auditor = auditors.make(h.w.auditor)
    async with auditor:
        await auditor.monitor_round()
        attacker = await swap_key(env, h.w.yen_lac)
        impostor = Office(h.w.yen_lac.code, h.w.yen_lac.name, attacker, h.w.yen_lac.encryption)
        await login(env, impostor)
        status, doc = await post_receipts(
            env, impostor, [forged_receipt(h.w.yen_lac, attacker, h.envelope, "06")]
        )
        assert status == 200, doc
        assert doc["results"][0]["status"] == 200, doc
        await log_kinds(env)
        round_ = await auditor.monitor_round()
        codes = {a["code"] for a in round_["alarms"]}
        assert codes == {"receipt_invalid", "directory_entry_not_logged"}, round_["alarms"]
        not_logged = next(a for a in round_["alarms"] if a["code"] == "directory_entry_not_logged")
        assert h.w.yen_lac.code in not_logged["detail"]
        assert "newest is serial" in not_logged["detail"]
        with pytest.raises(AuditAlarm) as caught:
            await auditor.trace(h.packet)
        assert caught.value.code == "key_unknown"
        assert caught.value.detail.startswith(f"packet {h.packet}: ")
        assert auditor.store.alarms()


async def test_a_fork_is_caught_when_checkpoints_meet(hub_env: HubEnv, auditors: Auditors) -> None:
    """The hub shows one log to auditor A and the offices, then forks: auditor B, new,
    is shown the other one.  B requiring a witness finds no cosignature on it; A's next
    checkpoint, or B meeting A's checkpoint, proves the fork with two signed notes."""
    env = hub_env
    h = await history(env)
    a = auditors.make(h.w.auditor, name="a")
    async with a:
        seen_by_a = await a.checkpoint(cosign=False)
    note = await cosign_as(env, h.w.province)  # an office witnesses the honest log
    assert parse_note(note).text == parse_note(seen_by_a["note"].encode()).text
    idx = await index_of(env, "receipt", status="03")
    data = dict(await entries(env))[idx]
    forked = await rewrite_history(env, {idx: rewritten_receipt(h.w.yen_lac, data, "06")})

    b = auditors.make(h.w.auditor, name="b", witnesses=[h.w.province.code], threshold=1)
    async with b:
        with pytest.raises(NodeError) as refused:
            await b.checkpoint()
        assert refused.value.code == "witnesses_insufficient"
        assert "0 valid cosignatures" in refused.value.detail
        # without the witness requirement B would have taken the forked log on first use
        taken = await b.checkpoint(witnesses=(), threshold=0, cosign=False)
        assert taken["note"] == forked.decode()
        peer = a.home.root / "a-checkpoint.txt"
        peer.write_text(seen_by_a["note"])
        with pytest.raises(AuditAlarm) as met:
            await b.compare([peer.read_bytes()])
        assert met.value.code == "checkpoint_inconsistent"
        assert "a fork" in met.value.detail
        assert met.value.evidence["previous"] == forked.decode()
        assert met.value.evidence["current"] == seen_by_a["note"]
    async with a:
        with pytest.raises(AuditAlarm) as caught:
            await a.checkpoint()
        assert caught.value.code == "checkpoint_inconsistent"
        assert caught.value.evidence["previous"] == seen_by_a["note"]
        assert caught.value.evidence["current"] == forked.decode()
