"""Helpers for the auditors' tests: a small history, auditors, and a dishonest operator.

``history`` runs a directive's life through the real API: the province sends a plan to two
communes, Yên Lạc fetches it, answers 01 and registers it (03, số đến 125); Tam Hồng does
nothing.  The ``Operator`` helpers then edit the hub's database behind its back the ways
the issue lists -- an entry changed, an entry removed, a receipt rewritten, a key swapped
-- with nothing but SQL and, where a real attacker on the hub's machine would have them,
the hub's own keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, text, update

from hub.app import log_origin
from hub.auditlog.models import LogCheckpoint, LogCosignature, LogEntry, LogHash
from hub.models import OrganKey
from nodes.audithome import AuditConfig, AuditHome
from nodes.auditor import Auditor
from nodes.auditstore import AuditStore
from nodes.keystore import Keystore
from protocol.audit import encode_event, parse_event
from protocol.bundle import log_signer, witness_signer
from protocol.checkpoint import Checkpoint, add_cosignature, sign_checkpoint
from protocol.directory import KeyRecord, sign_entry
from protocol.keys import SigningPrivateKey
from protocol.merkle import MemoryHashStore, leaf_hash
from protocol.packet import Reference, parse_envelope
from protocol.policy import VN_TZ
from protocol.receipts import OfficeReceipt, sign_office_receipt
from tests.hub.helpers import (
    HubEnv,
    Office,
    World,
    ack,
    log_kinds,
    mailbox,
    office_receipt,
    post_receipts,
    send,
    with_routing,
    world,
)


def yesterday() -> str:
    return (datetime.now(VN_TZ).date() - timedelta(days=1)).isoformat()


@dataclass
class History:
    w: World
    envelope: bytes
    packet_id: bytes
    packet: str


async def history(env: HubEnv) -> History:
    w = await world(env)
    answer, envelope, _ = await send(
        env,
        w.province,
        [w.yen_lac, w.tam_hong],
        routing=with_routing(
            urgency=1, due=yesterday(), reference=Reference("KH", "05", "KH/TU", yesterday())
        ),
    )
    items = await mailbox(env, w.yen_lac)
    resp = await env.client.get(items[0]["body"]["url"], headers=w.yen_lac.headers)
    assert resp.status == 200
    await resp.read()
    await ack(env, w.yen_lac, items)
    receipts = [
        office_receipt(w.yen_lac, envelope, "01"),
        office_receipt(w.yen_lac, envelope, "03", details={"incoming_number": "125"}),
    ]
    status, doc = await post_receipts(env, w.yen_lac, receipts)
    assert status == 200, doc
    await log_kinds(env)
    env_parsed = parse_envelope(envelope)
    return History(w, envelope, env_parsed.packet_id, answer["packet_id"])


@dataclass
class Auditors:
    env: HubEnv
    root: Path
    made: list[AuditStore] = field(default_factory=list)

    def make(self, office: Office, name: str = "auditor", **settings: Any) -> Auditor:
        home = AuditHome(self.root / name)
        home.ensure_dirs()
        base = str(self.env.client.make_url("")).rstrip("/")
        config = AuditConfig(
            organ=office.code,
            hub_url=base,
            origin=log_origin(self.env.settings),
            **settings,
        ).check()
        keystore = Keystore(
            organ=office.code,
            hub_url=base,
            authority=self.env.keys.authority.public_key(),
            signing_keys=[office.signing],
            encryption_keys=[office.encryption],
            hub_key=self.env.keys.hub.public_key(),
        )
        store = AuditStore.open(home.db_path)
        self.made.append(store)
        return Auditor(home, config, store, keystore)

    def close(self) -> None:
        for store in self.made:
            store.close()


async def sql(env: HubEnv, statement: Any, params: dict[str, Any] | None = None) -> None:
    async with env.hub.engine.begin() as conn:
        await conn.execute(statement, params or {})


async def entries(env: HubEnv) -> list[tuple[int, bytes]]:
    async with env.hub.engine.connect() as conn:
        rows = await conn.execute(select(LogEntry.idx, LogEntry.data).order_by(LogEntry.idx))
        return [(int(i), bytes(d)) for i, d in rows]


async def index_of(env: HubEnv, kind: str, **fields: Any) -> int:
    for idx, data in await entries(env):
        event = parse_event(data)
        if event.kind == kind and all(event.fields.get(k) == v for k, v in fields.items()):
            return idx
    raise AssertionError(f"no {kind} entry with {fields}")


def rewritten_receipt(office: Office, data: bytes, status: str, **details: str) -> bytes:
    """The receipt event ``data`` with its status changed: re-encoded, the receipt body
    changed but -- the operator has no office key -- its old signature kept."""
    event = parse_event(data)
    f = event.fields
    return encode_event(
        "receipt",
        event.at,
        packet_id=f["packet_id"],
        envelope_digest=f["envelope_digest"],
        organ=f["organ"],
        status=status,
        receipt=f["receipt"].replace(b"\x62" + b"03", b"\x62" + status.encode(), 1),
    )


async def rewrite_history(env: HubEnv, changes: dict[int, bytes]) -> bytes:
    """An operator with the hub's key rewrites entries *and* everything that covers them:
    stored hashes recomputed, the newest checkpoint re-signed at the same size, the
    witnesses' cosignatures of it dropped.  Returns the new note."""
    rows = await entries(env)
    data = [changes.get(i, d) for i, d in rows]
    tree = MemoryHashStore()
    hashes: list[dict[str, Any]] = []
    for d in data:
        for level, idx, h in tree.append(leaf_hash(d)):
            hashes.append({"level": level, "idx": idx, "hash": h})
    origin = log_origin(env.settings)
    note = sign_checkpoint(
        Checkpoint(origin, tree.size, tree.root(), (f"time {int(time.time())}",)),
        log_signer(env.keys.hub, origin),
    )
    async with env.hub.engine.begin() as conn:
        for i, d in changes.items():
            await conn.execute(
                update(LogEntry).where(LogEntry.idx == i).values(data=d, leaf_hash=leaf_hash(d))
            )
        await conn.execute(delete(LogHash))
        await conn.execute(LogHash.__table__.insert(), hashes)
        await conn.execute(delete(LogCosignature).where(LogCosignature.size == tree.size))
        await conn.execute(
            update(LogCheckpoint)
            .where(LogCheckpoint.size == tree.size)
            .values(root=tree.root(), note=note.decode())
        )
    return note


async def swap_key(env: HubEnv, office: Office) -> SigningPrivateKey:
    """The operator signs a new entry for ``office`` with the directory authority key (it
    sits on the hub) listing a signing key of its own, and puts it in the ``organs`` and
    ``organ_keys`` tables -- without the directory event every change should log."""
    assert office.entry is not None
    attacker = SigningPrivateKey.generate()
    pub = attacker.public_key()
    now = int(time.time())
    entry = replace(
        office.entry,
        signing_keys=(
            *office.entry.signing_keys,
            KeyRecord(pub.alg, pub.raw, now - 60, now + 86400 * 365),
        ),
        serial=office.entry.serial + 1,
        issued_at=now - 60,
    )
    raw = sign_entry(entry, env.keys.authority)
    await sql(
        env,
        text("UPDATE organs SET entry = :entry, serial = :serial WHERE code = :code"),
        {"entry": raw, "serial": entry.serial, "code": office.code},
    )
    async with env.hub.engine.begin() as conn:
        await conn.execute(
            OrganKey.__table__.insert().values(
                kid=pub.kid,
                organ=office.code,
                usage="sign",
                alg=pub.alg,
                pub=pub.raw,
                not_before=now - 60,
                not_after=now + 86400 * 365,
            )
        )
    env.hub.entries._entries.clear()
    return attacker


def forged_receipt(office: Office, key: SigningPrivateKey, envelope: bytes, status: str) -> bytes:
    env = parse_envelope(envelope)
    receipt = OfficeReceipt(
        packet_id=env.packet_id,
        envelope_digest=env.digest,
        organ=office.code,
        signer=office.code,
        signer_kid=key.kid,
        status=status,
        at=int(time.time()),
    )
    return sign_office_receipt(receipt, key)


async def cosign_as(env: HubEnv, office: Office, note: bytes | None = None) -> bytes:
    """``office`` cosigns the newest checkpoint (or ``note``) as a witness."""
    if note is None:
        note = await (await env.client.get("/v1/log/checkpoint")).read()
    cosigned = add_cosignature(note, witness_signer(office.code, office.signing), int(time.time()))
    resp = await env.client.post("/v1/log/cosignatures", data=cosigned, headers=office.headers)
    assert resp.status == 200, await resp.text()
    return note
