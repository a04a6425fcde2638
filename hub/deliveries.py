"""Deliveries: office receipts, body fetches and the status a sender (or auditor) sees.

Each (packet, recipient) has a ``deliveries`` row and an append-only history in
``delivery_events`` of the signed receipts about it.  An office receipt is verified
against the signer's *signed* directory entry and the stored envelope -- its packet id,
digest, sender and recipients (the delivery rows), from the stored columns
(:func:`protocol.receipts.verify_office_receipt`) -- then applied to the delivery's state
machine rebuilt from the stored history (:class:`protocol.receipts.Delivery`); it is
stored, logged (``receipt``) and relayed to the other party's mailbox: a recipient's
receipt to the sender, a sender's recall request (13) to the recipient.  The same receipt
bytes again are acknowledged without a second record.
"""

from __future__ import annotations

import base64
import hmac
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.audit import encode_event
from protocol.errors import RemoteError
from protocol.receipts import (
    Delivery,
    ParsedReceipt,
    parse_office_receipt,
    verify_office_receipt,
)

from .auditlog import append_encoded
from .clock import now
from .context import Hub
from .db import in_list, run
from .logs import get_logger
from .models import DeliveryEvent, DeliveryRow, HubReceiptPending, MailboxItem, Organ, Packet
from .packets import ACCEPTED
from .sessions import Caller

log = get_logger("hub.deliveries")


#: Bodies up to this size (ciphertext bytes) travel inline in mailbox answers, and their
#: ``fetched`` is recorded when the recipient acknowledges the item (hub.mailbox).
INLINE_BODY_MAX: Final = 64 * 1024
#: Attempts at a receipt batch when a receipt was stored concurrently (see post_receipts).
_ATTEMPTS: Final = 2

# The hot paths run prebuilt Core statements (a statement built per call costs more
# Python than its round trip); lists go in as one parameter (:func:`hub.db.in_list`).
_P = cast(Table, Packet.__table__)
_D = cast(Table, DeliveryRow.__table__)
_E = cast(Table, DeliveryEvent.__table__)
_M = cast(Table, MailboxItem.__table__)
_O = cast(Table, Organ.__table__)
_H = cast(Table, HubReceiptPending.__table__)
_PACKETS = select(_P.c.id, _P.c.sender, _P.c.envelope_digest, _P.c.urgency).where(
    in_list(_P.c.id, "ids"), _P.c.state == ACCEPTED
)


class _PacketRow(NamedTuple):
    id: bytes
    sender: str
    envelope_digest: bytes
    urgency: int


_ROWS = (
    select(_D.c.packet_id, _D.c.organ, _D.c.state)
    .where(tuple_(_D.c.packet_id, _D.c.organ).in_(bindparam("pairs", expanding=True)))
    .order_by(_D.c.packet_id, _D.c.organ)
    .with_for_update()
)
_STORED = select(_E.c.digest).where(in_list(_E.c.digest, "digests"))
_HISTORIES = (
    select(_E.c.packet_id, _E.c.organ, _E.c.status, _E.c.at)
    .where(
        tuple_(_E.c.packet_id, _E.c.organ).in_(bindparam("pairs", expanding=True)),
        _E.c.source == "office",
    )
    .order_by(_E.c.id)
)
_ENTRY = select(_O.c.entry).where(_O.c.code == bindparam("code"), _O.c.entry.is_not(None))
_INSERT_EVENTS = {
    name: dialect_insert(_E)
    .on_conflict_do_nothing(index_elements=["digest"])
    .returning(_E.c.id, _E.c.digest)
    for name, dialect_insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_SET_STATES = (
    update(_D)
    .where(_D.c.packet_id == bindparam("b_packet_id"), _D.c.organ == bindparam("b_organ"))
    .values(state=bindparam("b_state"), updated_at=bindparam("b_at"))
)
_INSERT_MAIL = insert(_M)
#: The envelope digest of each claimed delivery's packet comes back with it (a subquery
#: in RETURNING: SQLite allows no other table there).
_CLAIMED_DIGEST = select(_P.c.envelope_digest).where(_P.c.id == _D.c.packet_id).scalar_subquery()
_CLAIM = (
    update(_D)
    .where(
        _D.c.organ == bindparam("b_organ"),
        in_list(_D.c.packet_id, "b_ids"),
        _D.c.fetched_at.is_(None),
    )
    .values(fetched_at=bindparam("b_at"))
    .returning(_D.c.packet_id, _CLAIMED_DIGEST)
)
_CLAIM_INLINE = (
    update(_D)
    .where(
        _D.c.organ == bindparam("b_organ"),
        _D.c.packet_id.in_(
            select(_P.c.id).where(
                in_list(_P.c.id, "b_ids"),
                _P.c.body_size <= INLINE_BODY_MAX,
                _P.c.body_deleted_at.is_(None),
            )
        ),
        _D.c.fetched_at.is_(None),
    )
    .values(fetched_at=bindparam("b_at"))
    .returning(_D.c.packet_id, _CLAIMED_DIGEST)
)
_INSERT_PENDING = insert(_H)
_READABLE = (
    select(_P.c.id, _P.c.sender, _D.c.organ)
    .select_from(
        _P.outerjoin(_D, and_(_D.c.packet_id == _P.c.id, _D.c.organ == bindparam("organ")))
    )
    .where(
        _P.c.body_sha256 == bindparam("digest"),
        _P.c.state == ACCEPTED,
        _P.c.body_deleted_at.is_(None),
    )
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Conflict(Exception):
    """A receipt of the batch was stored by a concurrent request: start the batch over."""


@dataclass(slots=True)
class _Batch:
    results: list[dict[str, Any]]
    wake: set[str]
    applied: list[str]


async def post_receipts(hub: Hub, caller: Caller, raws: Sequence[bytes]) -> list[dict[str, Any]]:
    """Verify, apply, store and relay each receipt; one result per receipt, in order.

    Set-based: whatever the batch size, one query each for the packets, the delivery rows
    (locked), the receipts already stored, the histories and the signer's entry, then one
    bulk statement each for the new history events, the delivery states, the audit-log
    events and the relayed mailbox items.  The receipts are still checked and applied one
    by one, in order, against the state the earlier ones of the batch left.

    A receipt stored by a concurrent request between our duplicate check and our insert
    (possible only where row locks do not serialise us) makes the insert skip it: the
    batch then starts over in a new transaction, where it is a plain duplicate.
    """
    at = now()
    batch: _Batch | None = None
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            batch = await _post_batch(hub, caller, raws, at, last=attempt == _ATTEMPTS)
            break
        except _Conflict:
            log.info("receipt stored concurrently: batch retried", organ=caller.organ)
    assert batch is not None
    hub.notifier.wake(batch.wake)
    for status in batch.applied:
        hub.metrics.receipts.labels(status).inc()
    return batch.results


def _problem(exc: RemoteError) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.code, "detail": exc.detail}


async def _post_batch(
    hub: Hub, caller: Caller, raws: Sequence[bytes], at: int, *, last: bool
) -> _Batch:
    results: list[dict[str, Any]] = [{} for _ in raws]
    todo: list[tuple[int, ParsedReceipt]] = []
    for i, raw in enumerate(raws):
        try:
            parsed = parse_office_receipt(raw)
            if parsed.receipt.signer != caller.organ:
                raise RemoteError(
                    "receipt_signer_mismatch", f"the receipt is signed for {parsed.receipt.signer}"
                )
        except RemoteError as exc:
            results[i] = _problem(exc)
            continue
        todo.append((i, parsed))
    batch = _Batch(results, set(), [])
    if not todo:
        return batch
    async with hub.engine.begin() as conn:
        await _apply_batch(hub, conn, caller, todo, at, batch, last=last)
        await hub.notifier.publish(conn, batch.wake)
    return batch


async def _apply_batch(
    hub: Hub,
    conn: AsyncConnection,
    caller: Caller,
    todo: list[tuple[int, ParsedReceipt]],
    at: int,
    batch: _Batch,
    *,
    last: bool,
) -> None:
    packet_ids = sorted({p.receipt.packet_id for _, p in todo})
    packets = {
        bytes(row[0]): _PacketRow(*row) for row in await run(conn, _PACKETS, {"ids": packet_ids})
    }
    # The rows receipts apply to, locked (in key order: no deadlock between batches),
    # and the caller's own, which make a packet visible to a recipient.
    pairs = {
        (p.receipt.packet_id, p.receipt.organ) for _, p in todo if p.receipt.packet_id in packets
    }
    pairs |= {(pid, caller.organ) for pid in packets}
    states: dict[tuple[bytes, str], str] = {}
    if pairs:
        rows = await conn.execute(_ROWS, {"pairs": sorted(pairs)})
        states = {(bytes(pid), organ): state for pid, organ, state in rows}

    def visible(packet_id: bytes) -> bool:
        packet = packets.get(packet_id)
        return packet is not None and (
            packet.sender == caller.organ or (packet_id, caller.organ) in states
        )

    stored = {
        bytes(d)
        for d in (
            await run(conn, _STORED, {"digests": sorted({p.digest for _, p in todo})})
        ).scalars()
    }
    fresh = [p for _, p in todo if visible(p.receipt.packet_id) and p.digest not in stored]
    histories: dict[tuple[bytes, str], list[tuple[str, int]]] = {}
    entry = None
    wanted = sorted({(p.receipt.packet_id, p.receipt.organ) for p in fresh} & states.keys())
    if wanted:
        for pid, organ, status, when in await conn.execute(_HISTORIES, {"pairs": wanted}):
            histories.setdefault((bytes(pid), organ), []).append((status, when))
    if fresh:
        raw_entry = (await run(conn, _ENTRY, {"code": caller.organ})).scalar()
        entry = None if raw_entry is None else hub.entries.verify(raw_entry)

    deliveries: dict[tuple[bytes, str], Delivery] = {}
    applied: list[tuple[int, ParsedReceipt]] = []
    seen: set[bytes] = set()
    for i, parsed in todo:
        r = parsed.receipt
        result = {
            "packet_id": str(uuid.UUID(bytes=r.packet_id)),
            "organ": r.organ,
            "receipt_status": r.status,
        }
        key = (r.packet_id, r.organ)
        try:
            if not visible(r.packet_id):
                raise RemoteError("packet_unknown")
            if parsed.digest in stored or parsed.digest in seen:
                batch.results[i] = {
                    "status": 200,
                    **result,
                    "state": states.get(key),
                    "duplicate": True,
                }
                continue
            packet = packets[r.packet_id]
            if entry is None:
                raise RemoteError("organ_unknown", f"{r.signer} has no directory entry")
            # What verifying against the stored envelope checks first, from its columns
            # (parsing a large envelope per receipt would cost more than all the rest):
            # the envelope digest, then that the organ is addressed -- the delivery rows
            # are the envelope's recipients.
            if not hmac.compare_digest(bytes(packet.envelope_digest), r.envelope_digest):
                raise RemoteError(
                    "receipt_envelope_mismatch", "the receipt names another envelope digest"
                )
            if key not in states:
                raise RemoteError(
                    "recipient_not_addressed", f"{r.organ} is not a recipient of this packet"
                )
            verify_office_receipt(
                parsed,
                entry,
                packet_id=r.packet_id,
                envelope_digest=bytes(packet.envelope_digest),
                sender=packet.sender,
                received_at=at,
            )
            delivery = deliveries.get(key)
            if delivery is None:
                delivery = Delivery.replay(
                    histories.get(key, []), packet_id=r.packet_id, organ=r.organ
                )
                deliveries[key] = delivery
            states[key] = delivery.apply_receipt(r)
        except RemoteError as exc:
            batch.results[i] = _problem(exc)
            continue
        seen.add(parsed.digest)
        applied.append((i, parsed))
        batch.results[i] = {"status": 200, **result, "state": states[key]}
    if not applied:
        return

    inserted = {
        bytes(digest): event_id
        for event_id, digest in await conn.execute(
            _INSERT_EVENTS[conn.dialect.name],
            [
                {
                    "packet_id": p.receipt.packet_id,
                    "organ": p.receipt.organ,
                    "source": "office",
                    "status": p.receipt.status,
                    "at": p.receipt.at,
                    "received_at": at,
                    "signer": p.receipt.signer,
                    "receipt": p.raw,
                    "digest": p.digest,
                }
                for _, p in applied
            ],
        )
    }
    if len(inserted) != len(applied):
        if not last:
            raise _Conflict
        for i, p in applied:
            if p.digest not in inserted:
                batch.results[i] = {"status": 200, "duplicate": True}
        applied = [(i, p) for i, p in applied if p.digest in inserted]
    touched = sorted({(p.receipt.packet_id, p.receipt.organ) for _, p in applied})
    if touched:
        await run(
            conn,
            _SET_STATES,
            [
                {"b_packet_id": pid, "b_organ": organ, "b_state": states[(pid, organ)], "b_at": at}
                for pid, organ in touched
            ],
        )
    await append_encoded(
        conn,
        [
            (
                encode_event(
                    "receipt",
                    at,
                    packet_id=p.receipt.packet_id,
                    envelope_digest=p.receipt.envelope_digest,
                    organ=p.receipt.organ,
                    status=p.receipt.status,
                    receipt=p.raw,
                ),
                p.receipt.packet_id,
            )
            for _, p in applied
        ],
    )
    mail: list[dict[str, Any]] = []
    for _, p in applied:
        r = p.receipt
        packet = packets[r.packet_id]
        relay_to = packet.sender if r.signer == r.organ else r.organ
        mail.append(
            {
                "organ": relay_to,
                "kind": "receipt",
                "packet_id": r.packet_id,
                "urgency": packet.urgency,
                "event_id": inserted[p.digest],
                "created_at": at,
            }
        )
        batch.wake.add(relay_to)
        batch.applied.append(r.status)
    if mail:
        await run(conn, _INSERT_MAIL, mail)


async def record_fetch(hub: Hub, organ: str, packet_ids: Sequence[bytes]) -> int:
    """A recipient downloaded the body completely: ``fetched``, once per delivery."""
    async with hub.engine.begin() as conn:
        recorded = await record_fetches(conn, organ, packet_ids, now())
    if recorded:
        hub.signer.poke()
        log.info("body fetched", organ=organ, packets=recorded)
    return recorded


async def record_fetches(
    conn: AsyncConnection,
    organ: str,
    packet_ids: Collection[bytes],
    at: int,
    *,
    inline_only: bool = False,
) -> int:
    """Record ``fetched`` for the deliveries of ``packet_ids`` to ``organ`` not yet fetched.

    In the caller's transaction and in bulk: one UPDATE claims the deliveries (``fetched_at``
    still empty: exactly once per delivery, whoever records it -- a download, an
    acknowledged inline body, concurrently or not), then one INSERT each for the
    ``body_fetched`` audit events and the pending hub receipts.  With ``inline_only``,
    only packets whose body travels inline in mailbox answers (:data:`INLINE_BODY_MAX`,
    not deleted) count.  Returns how many were recorded.
    """
    return await record_fetches_many(conn, {organ: packet_ids}, at, inline_only=inline_only)


async def record_fetches_many(
    conn: AsyncConnection,
    wanted: Mapping[str, Collection[bytes]],
    at: int,
    *,
    inline_only: bool = False,
) -> int:
    """:func:`record_fetches` for several organs at once: one claim per organ (in order of
    organ code) that returns the envelope digests, then the audit events and pending
    receipts of all in one statement each.
    """
    claimed: list[tuple[str, bytes, bytes]] = []
    for organ in sorted(wanted):
        packet_ids = wanted[organ]
        if not packet_ids:
            continue
        params = {"b_organ": organ, "b_ids": sorted(set(packet_ids)), "b_at": at}
        rows = await run(conn, _CLAIM_INLINE if inline_only else _CLAIM, params)
        claimed += sorted((organ, bytes(pid), bytes(digest)) for pid, digest in rows)
    if not claimed:
        return 0
    events: list[tuple[bytes, bytes | None]] = []
    pending: list[dict[str, Any]] = []
    for organ, pid, digest in claimed:
        event = encode_event("body_fetched", at, packet_id=pid, envelope_digest=digest, organ=organ)
        events.append((event, pid))
        pending.append(
            {"kind": "fetched", "packet_id": pid, "organ": organ, "at": at, "event": event}
        )
    await append_encoded(conn, events)
    await run(conn, _INSERT_PENDING, pending)
    return len(claimed)


async def packet_status(hub: Hub, caller: Caller, packet_id: bytes) -> dict[str, Any]:
    """Every recipient's state and history, for the sender and for auditors."""
    async with hub.reads() as session:
        packet = await session.get(Packet, packet_id)
        if packet is None or (caller.role == "office" and packet.sender != caller.organ):
            raise RemoteError("packet_unknown")
        deliveries = (
            await session.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.packet_id == packet_id)
                .order_by(DeliveryRow.organ)
            )
        ).all()
        events = (
            await session.scalars(
                select(DeliveryEvent)
                .where(DeliveryEvent.packet_id == packet_id)
                .order_by(DeliveryEvent.id)
            )
        ).all()
    history: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        history.setdefault(ev.organ, []).append(
            {
                "source": ev.source,
                "status": ev.status,
                "at": ev.at,
                "received_at": ev.received_at,
                "signer": ev.signer,
                "receipt": _b64(ev.receipt),
            }
        )
    return {
        "packet_id": str(uuid.UUID(bytes=packet.id)),
        "sender": packet.sender,
        "kind": packet.kind,
        "state": packet.state,
        "urgency": packet.urgency,
        "secrecy": packet.secrecy,
        "envelope_digest": packet.envelope_digest.hex(),
        "body_sha256": packet.body_sha256.hex(),
        "body_size": packet.body_size,
        "submitted_at": packet.submitted_at,
        "accepted_at": packet.accepted_at,
        "body_deleted_at": packet.body_deleted_at,
        "receipt": None if packet.hub_receipt is None else _b64(packet.hub_receipt),
        "recipients": [
            {
                "organ": d.organ,
                "state": d.state,
                "fetched_at": d.fetched_at,
                "updated_at": d.updated_at,
                "history": history.get(d.organ, []),
            }
            for d in deliveries
        ],
    }


async def readable_packets(hub: Hub, caller: Caller, digest: bytes) -> tuple[list[bytes], bool]:
    """Accepted packets with this body the caller may download: (as recipient, as sender)."""
    async with hub.reader.connect() as conn:
        rows = (await conn.execute(_READABLE, {"organ": caller.organ, "digest": digest})).all()
    as_sender = any(sender == caller.organ for _, sender, _ in rows)
    as_recipient = [bytes(pid) for pid, _, organ in rows if organ is not None]
    return as_recipient, as_sender
