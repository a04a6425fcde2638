"""Mailboxes: what each organ has still to collect, until it acknowledges it.

Items are new envelopes addressed to the organ and receipts relayed to it (office
receipts on packets it sent, hub ``fetched`` receipts, recall requests on packets it
received).  A read does not remove anything: the node acknowledges what it has safely
stored (``POST /v1/mailbox/ack``), so a crash between read and store loses nothing --
delivery is at least once, and nodes drop what they already have by packet id or receipt
digest.  Order: most urgent first, then oldest.

:func:`long_poll` waits up to ``wait`` seconds for something to arrive, woken by
:class:`hub.notify.MailboxNotifier` (in-process, or PostgreSQL NOTIFY from another hub
process) and re-reading the mailbox every :data:`RECHECK` seconds regardless.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .context import Hub
from .models import DeliveryEvent, MailboxItem, Packet

#: Envelope bytes one answer carries at most (at least one item is always returned).
BYTES_BUDGET: Final = 8 * 1024 * 1024
#: A waiting request re-reads its mailbox this often even without a wake-up.  Only a
#: safety net: wake-ups are in-process events and PostgreSQL NOTIFY (sent in the
#: committing transaction; a reconnecting listener wakes everyone), so a short period
#: costs a query per waiting office every few seconds for nothing: 5 s cost a third of
#: a CPU per 1,000 idle offices (tests/bench, scenario 5).
RECHECK: Final = 30.0
ACK_MAX: Final = 5000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def read_items(session: AsyncSession, organ: str, limit: int) -> list[dict[str, Any]]:
    items = (
        await session.scalars(
            select(MailboxItem)
            .where(MailboxItem.organ == organ)
            .order_by(MailboxItem.urgency.desc(), MailboxItem.id)
            .limit(limit)
        )
    ).all()
    if not items:
        return []
    envelope_ids = {i.packet_id for i in items if i.kind == "envelope"}
    event_ids = {i.event_id for i in items if i.event_id is not None}
    packets: dict[bytes, Any] = {}
    if envelope_ids:
        rows = await session.execute(
            select(Packet.id, Packet.envelope, Packet.body_sha256, Packet.body_size).where(
                Packet.id.in_(envelope_ids)
            )
        )
        packets = {bytes(r[0]): r for r in rows}
    events: dict[int, DeliveryEvent] = {}
    if event_ids:
        events = {
            e.id: e
            for e in await session.scalars(
                select(DeliveryEvent).where(DeliveryEvent.id.in_(event_ids))
            )
        }
    out: list[dict[str, Any]] = []
    budget = BYTES_BUDGET
    for item in items:
        doc: dict[str, Any] = {
            "id": item.id,
            "kind": item.kind,
            "packet_id": str(uuid.UUID(bytes=item.packet_id)),
            "urgency": item.urgency,
            "created_at": item.created_at,
        }
        if item.kind == "envelope":
            _, envelope, sha256, size = packets[item.packet_id]
            if out and len(envelope) > budget:
                break
            budget -= len(envelope)
            doc["envelope"] = _b64(envelope)
            doc["body"] = {
                "sha256": sha256.hex(),
                "size": size,
                "url": f"/v1/bodies/{sha256.hex()}",
            }
        else:
            event = events[item.event_id] if item.event_id is not None else None
            if event is None:
                continue
            doc.update(
                {
                    "organ": event.organ,
                    "status": event.status,
                    "signer": event.signer,
                    "receipt": _b64(event.receipt),
                }
            )
        out.append(doc)
    return out


async def ack(hub: Hub, organ: str, ids: Sequence[int]) -> int:
    async with hub.sessions.begin() as session:
        result = await session.execute(
            delete(MailboxItem).where(MailboxItem.organ == organ, MailboxItem.id.in_(list(ids)))
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def long_poll(hub: Hub, organ: str, wait: float, limit: int) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with hub.notifier.listen(organ) as woken:
        while True:
            woken.clear()
            async with hub.sessions() as session:
                items = await read_items(session, organ, limit)
            left = deadline - loop.time()
            if items or left <= 0 or hub.notifier.closing:
                return items
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, RECHECK))
