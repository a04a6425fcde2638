"""Deliveries: office receipts, body fetches and the status a sender (or auditor) sees.

Each (packet, recipient) has a ``deliveries`` row and an append-only history in
``delivery_events`` of the signed receipts about it.  An office receipt is verified
against the signer's *signed* directory entry and the stored envelope
(:func:`protocol.receipts.verify_office_receipt`), then applied to the delivery's state
machine rebuilt from the stored history (:class:`protocol.receipts.Delivery`); it is
stored, logged (``receipt``) and relayed to the other party's mailbox: a recipient's
receipt to the sender, a sender's recall request (13) to the recipient.  The same receipt
bytes again are acknowledged without a second record.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.audit import encode_event
from protocol.errors import RemoteError
from protocol.packet import ENVELOPE_MAX, Envelope, parse_envelope
from protocol.receipts import Delivery, parse_office_receipt, verify_office_receipt

from . import directory
from .auditlog import append_event
from .clock import now
from .context import Hub
from .logs import get_logger
from .models import DeliveryEvent, DeliveryRow, HubReceiptPending, MailboxItem, Packet
from .packets import ACCEPTED
from .sessions import Caller

log = get_logger("hub.deliveries")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Envelopes:
    """Parsed stored envelopes, for one request."""

    def __init__(self) -> None:
        self._cache: dict[bytes, Envelope] = {}

    def get(self, packet: Packet) -> Envelope:
        found = self._cache.get(packet.id)
        if found is None:
            found = parse_envelope(
                packet.envelope, max_size=max(ENVELOPE_MAX, len(packet.envelope))
            )
            self._cache[packet.id] = found
        return found


async def _visible_packet(session: AsyncSession, caller: Caller, packet_id: bytes) -> Packet:
    """The accepted packet, if the caller sent it or is one of its recipients."""
    packet = await session.get(Packet, packet_id)
    if packet is not None and packet.state == ACCEPTED:
        if packet.sender == caller.organ:
            return packet
        if await session.get(DeliveryRow, (packet_id, caller.organ)) is not None:
            return packet
    raise RemoteError("packet_unknown")


async def _apply_receipt(
    hub: Hub,
    session: AsyncSession,
    caller: Caller,
    raw: bytes,
    at: int,
    envelopes: _Envelopes,
    wake: set[str],
) -> dict[str, Any]:
    parsed = parse_office_receipt(raw)
    r = parsed.receipt
    if r.signer != caller.organ:
        raise RemoteError("receipt_signer_mismatch", f"the receipt is signed for {r.signer}")
    result = {
        "packet_id": str(uuid.UUID(bytes=r.packet_id)),
        "organ": r.organ,
        "receipt_status": r.status,
    }
    duplicate = await session.scalar(
        select(DeliveryEvent.id).where(DeliveryEvent.digest == parsed.digest)
    )
    packet = await _visible_packet(session, caller, r.packet_id)
    if duplicate is not None:
        state = await session.scalar(
            select(DeliveryRow.state).where(
                DeliveryRow.packet_id == r.packet_id, DeliveryRow.organ == r.organ
            )
        )
        return {"status": 200, **result, "state": state, "duplicate": True}
    env = envelopes.get(packet)
    entries = await directory.verified_entries(session, hub.entries, [r.signer])
    if r.signer not in entries:
        raise RemoteError("organ_unknown", f"{r.signer} has no directory entry")
    verify_office_receipt(parsed, entries[r.signer], envelope=env, received_at=at)
    row = await session.get(DeliveryRow, (r.packet_id, r.organ), with_for_update=True)
    if row is None:
        raise RemoteError("recipient_not_addressed", f"{r.organ} has no delivery of this packet")
    history = await session.execute(
        select(DeliveryEvent.status, DeliveryEvent.at)
        .where(
            DeliveryEvent.packet_id == r.packet_id,
            DeliveryEvent.organ == r.organ,
            DeliveryEvent.source == "office",
        )
        .order_by(DeliveryEvent.id)
    )
    delivery = Delivery.replay(
        [(status, when) for status, when in history], packet_id=r.packet_id, organ=r.organ
    )
    state = delivery.apply_receipt(r)
    event = DeliveryEvent(
        packet_id=r.packet_id,
        organ=r.organ,
        source="office",
        status=r.status,
        at=r.at,
        received_at=at,
        signer=r.signer,
        receipt=parsed.raw,
        digest=parsed.digest,
    )
    async with session.begin_nested():
        session.add(event)
        await session.flush()
    row.state = state
    row.updated_at = at
    await append_event(
        session,
        "receipt",
        at,
        packet_id=r.packet_id,
        envelope_digest=r.envelope_digest,
        organ=r.organ,
        status=r.status,
        receipt=parsed.raw,
    )
    relay_to = packet.sender if r.signer == r.organ else r.organ
    session.add(
        MailboxItem(
            organ=relay_to,
            kind="receipt",
            packet_id=r.packet_id,
            urgency=packet.urgency,
            event_id=event.id,
            created_at=at,
        )
    )
    wake.add(relay_to)
    hub.metrics.receipts.labels(r.status).inc()
    return {"status": 200, **result, "state": state}


async def post_receipts(hub: Hub, caller: Caller, raws: Sequence[bytes]) -> list[dict[str, Any]]:
    """Verify, apply, store and relay each receipt; one result per receipt, in order."""
    at = now()
    envelopes = _Envelopes()
    wake: set[str] = set()
    results: list[dict[str, Any]] = []
    async with hub.sessions.begin() as session:
        for raw in raws:
            try:
                results.append(await _apply_receipt(hub, session, caller, raw, at, envelopes, wake))
            except RemoteError as exc:
                results.append({"status": exc.status, "code": exc.code, "detail": exc.detail})
            except IntegrityError:
                # The same receipt stored concurrently by another request: a duplicate.
                results.append({"status": 200, "duplicate": True})
        await hub.notifier.publish(session, wake)
    hub.notifier.wake(wake)
    return results


async def record_fetch(hub: Hub, organ: str, packet_ids: Sequence[bytes]) -> int:
    """A recipient downloaded the body completely: ``fetched``, once per delivery."""
    at = now()
    recorded = 0
    async with hub.sessions.begin() as session:
        for packet_id in packet_ids:
            claimed = await session.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.packet_id == packet_id,
                    DeliveryRow.organ == organ,
                    DeliveryRow.fetched_at.is_(None),
                )
                .values(fetched_at=at)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue
            packet = await session.get(Packet, packet_id)
            assert packet is not None
            fields = {
                "packet_id": packet_id,
                "envelope_digest": packet.envelope_digest,
                "organ": organ,
            }
            await append_event(session, "body_fetched", at, **fields)
            session.add(
                HubReceiptPending(
                    kind="fetched",
                    packet_id=packet_id,
                    organ=organ,
                    at=at,
                    event=encode_event("body_fetched", at, **fields),
                )
            )
            recorded += 1
    if recorded:
        hub.signer.poke()
        log.info("body fetched", organ=organ, packets=recorded)
    return recorded


async def packet_status(hub: Hub, caller: Caller, packet_id: bytes) -> dict[str, Any]:
    """Every recipient's state and history, for the sender and for auditors."""
    async with hub.sessions() as session:
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
    async with hub.sessions() as session:
        rows = (
            await session.execute(
                select(Packet.id, Packet.sender).where(
                    Packet.body_sha256 == digest,
                    Packet.state == ACCEPTED,
                    Packet.body_deleted_at.is_(None),
                )
            )
        ).all()
        if not rows:
            return [], False
        as_sender = any(sender == caller.organ for _, sender in rows)
        as_recipient = list(
            (
                await session.scalars(
                    select(DeliveryRow.packet_id).where(
                        DeliveryRow.packet_id.in_([pid for pid, _ in rows]),
                        DeliveryRow.organ == caller.organ,
                    )
                )
            ).all()
        )
    return [bytes(p) for p in as_recipient], as_sender
