"""Mailboxes: what each organ has still to collect, until it acknowledges it.

Items are new envelopes addressed to the organ and receipts relayed to it (office
receipts on packets it sent, hub ``fetched`` receipts, recall requests on packets it
received).  A read does not remove anything: the node acknowledges what it has safely
stored (``POST /v1/mailbox/ack``), so a crash between read and store loses nothing --
delivery is at least once, and nodes drop what they already have by packet id or receipt
digest.  Order: most urgent first, then oldest.

**Small bodies travel inline.**  An envelope item whose body is at most
:data:`hub.deliveries.INLINE_BODY_MAX` bytes (and not deleted by retention) carries the
body too, base64 in ``body.data``, always -- an item that does not fit the answer's
byte budget with its body waits for the next answer -- so the node needs no
``GET /v1/bodies/{digest}`` for it.  Acknowledging such an item records ``fetched`` for
the delivery (once, whether an earlier download already did), in the acknowledging
transaction and in bulk (:func:`hub.deliveries.record_fetches`).

Reads run without a transaction (:attr:`hub.context.Hub.reader`); the encoded envelope and
inline body of a packet are kept a short while (:mod:`hub.mailcache`), so a packet sent
to many offices is read and encoded once, not once per long-poll.

:func:`long_poll` waits up to ``wait`` seconds for something to arrive, woken by
:class:`hub.notify.MailboxNotifier` (in-process, or PostgreSQL NOTIFY from another hub
process) and re-reading the mailbox every :data:`RECHECK` seconds regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import Table, and_, bindparam, case, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .blobs import BlobStore
from .clock import now
from .db import in_list, read_rows, run
from .deliveries import INLINE_BODY_MAX, record_fetches_many
from .logs import get_logger
from .mailcache import B64, Encoded
from .models import DeliveryEvent, MailboxItem, Packet

if TYPE_CHECKING:
    from .context import Hub

#: Envelope and inline body bytes one answer carries at most (at least one item is
#: always returned).
BYTES_BUDGET: Final = 8 * 1024 * 1024
#: A waiting request re-reads its mailbox this often even without a wake-up.  Only a
#: safety net: wake-ups are in-process events and PostgreSQL NOTIFY (sent in the
#: committing transaction; a reconnecting listener wakes everyone), so a short period
#: costs a query per waiting office every few seconds for nothing: 5 s cost a third of
#: a CPU per 1,000 idle offices (tests/bench, scenario 5).
RECHECK: Final = 30.0
#: An empty long-poll answer comes between ``wait * (1 - WAIT_JITTER)`` and ``wait`` seconds:
#: 2,000 offices polling in step, all answered and polling again within a second, held
#: the hub's two CPUs for 1.8 s every 30 s (tests/bench, scenario 5: delivery p99 1 s at
#: 20 packets/s); spread over the last fifth of the wait, they drift apart each round.
WAIT_JITTER: Final = 0.2
#: Envelopes up to this size come with their mailbox item (one query for the answer).
ENVELOPE_WITH_ITEM: Final = 16 * 1024
ACK_MAX: Final = 5000
log = get_logger("hub.mailbox")


def _b64(data: bytes) -> B64:
    return B64.of(data)


def inline(size: int, deleted_at: int | None) -> bool:
    """Whether a body of ``size`` bytes travels inline (the same rule as acknowledging)."""
    return size <= INLINE_BODY_MAX and deleted_at is None


def _read_bodies(blobs: BlobStore, wanted: list[tuple[bytes, int]]) -> dict[bytes, bytes]:
    """The bodies that are stored whole (``digest -> bytes``); the others are left out."""
    out: dict[bytes, bytes] = {}
    for digest, size in wanted:
        try:
            with blobs.open(digest) as fh:
                data = fh.read(size + 1)
        except OSError:
            continue
        if len(data) == size:
            out[digest] = data
    return out


_M = cast(Table, MailboxItem.__table__)
_P = cast(Table, Packet.__table__)
_E = cast(Table, DeliveryEvent.__table__)
_ITEMS = (
    select(
        _M.c.id,
        _M.c.kind,
        _M.c.packet_id,
        _M.c.urgency,
        _M.c.created_at,
        _P.c.body_sha256,
        _P.c.body_size,
        _P.c.body_deleted_at,
        # A small envelope comes with its item: no second query for a packet read once
        # (most are: one recipient); larger ones are loaded once through the item cache.
        case(
            (
                and_(
                    _M.c.kind == "envelope", func.length(_P.c.envelope) <= bindparam("envelope_max")
                ),
                _P.c.envelope,
            ),
        ).label("envelope"),
        _E.c.organ,
        _E.c.status,
        _E.c.signer,
        _E.c.receipt,
    )
    .select_from(_M.join(_P, _P.c.id == _M.c.packet_id).outerjoin(_E, _E.c.id == _M.c.event_id))
    .where(_M.c.organ == bindparam("organ"))
    .order_by(_M.c.urgency.desc(), _M.c.id)
    .limit(bindparam("limit"))
)
#: The same column names as the items' rows (which may carry the envelope already).
_PACKETS = select(
    _P.c.id.label("packet_id"),
    _P.c.envelope,
    _P.c.body_sha256,
    _P.c.body_size,
    _P.c.body_deleted_at,
).where(in_list(_P.c.id, "ids"))
_REMOVE = (
    delete(_M)
    .where(_M.c.organ == bindparam("organ"), in_list(_M.c.id, "ids"))
    .returning(_M.c.packet_id, _M.c.kind)
)


async def _load_packets(
    hub: Hub, conn: AsyncConnection, packet_ids: list[bytes], read: dict[bytes, Mapping[str, Any]]
) -> dict[bytes, Encoded]:
    """Envelopes (and small bodies) of these packets, encoded for an answer; those in
    ``read`` (mailbox rows that came with their envelope) are not queried again."""
    rows: list[Mapping[str, Any]] = [read[pid] for pid in packet_ids if pid in read]
    others = [pid for pid in packet_ids if pid not in read]
    if others:
        rows += await read_rows(conn, _PACKETS, {"ids": others})
    small = [
        (bytes(r["body_sha256"]), r["body_size"])
        for r in rows
        if inline(r["body_size"], r["body_deleted_at"])
    ]
    bodies = await hub.blocking(_read_bodies, hub.blobs, small) if small else {}
    out: dict[bytes, Encoded] = {}
    for r in rows:
        pid, envelope = bytes(r["packet_id"]), r["envelope"]
        body = None
        if inline(r["body_size"], r["body_deleted_at"]):
            body = bodies.get(bytes(r["body_sha256"]))
            if body is None:
                log.warning("small body not readable: served by download", packet_id=pid.hex())
        out[pid] = Encoded(
            envelope=_b64(envelope),
            envelope_size=len(envelope),
            body=None if body is None else _b64(body),
        )
    return out


async def read_items(
    hub: Hub, conn: AsyncConnection, organ: str, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The organ's items for an answer, on a connection of ``hub.reader`` (no transaction),
    and whether they are all the mailbox holds (none left out by the limit, the byte
    budget or a packet that could not be read)."""
    params = {"organ": organ, "limit": limit, "envelope_max": ENVELOPE_WITH_ITEM}
    rows = await read_rows(conn, _ITEMS, params)
    if not rows:
        return [], True
    envelope_ids = {bytes(r["packet_id"]) for r in rows if r["kind"] == "envelope"}
    packets: dict[bytes, Encoded] = {}
    if envelope_ids:
        read = {bytes(r["packet_id"]): r for r in rows if r["envelope"] is not None}

        async def load(missing: list[bytes]) -> dict[bytes, Encoded]:
            return await _load_packets(hub, conn, missing, read)

        packets = await hub.items.get_many(envelope_ids, load)
    out: list[dict[str, Any]] = []
    budget = BYTES_BUDGET
    for row in rows:
        kind, packet_id = row["kind"], bytes(row["packet_id"])
        doc: dict[str, Any] = {
            "id": row["id"],
            "kind": kind,
            "packet_id": str(uuid.UUID(bytes=packet_id)),
            "urgency": row["urgency"],
            "created_at": row["created_at"],
        }
        if kind == "envelope":
            packet = packets.get(packet_id)
            if packet is None:
                continue
            body_size = row["body_size"]
            body = packet.body if inline(body_size, row["body_deleted_at"]) else None
            size = packet.envelope_size + (body_size if body is not None else 0)
            if out and size > budget:
                break
            budget -= size
            sha256 = bytes(row["body_sha256"]).hex()
            doc["envelope"] = packet.envelope
            doc["body"] = {"sha256": sha256, "size": body_size, "url": f"/v1/bodies/{sha256}"}
            if body is not None:
                doc["body"]["data"] = body
        else:
            if row["receipt"] is None:
                continue
            doc.update(
                {
                    "organ": row["organ"],
                    "status": row["status"],
                    "signer": row["signer"],
                    "receipt": _b64(row["receipt"]),
                }
            )
        out.append(doc)
    return out, len(rows) < limit and len(out) == len(rows)


async def ack(hub: Hub, organ: str, ids: Sequence[int]) -> int:
    """Remove the organ's items ``ids``; record ``fetched`` for inline bodies among them.

    Concurrent acknowledgements of one process (any organs) share a transaction
    (:mod:`hub.groupcommit`): each removes only its own organ's items.
    """
    if not ids:
        return 0
    mine = _Ack(organ, sorted(set(ids)))

    async def run(acks: Sequence[_Ack]) -> dict[_Ack, int]:
        return await _ack_many(hub, acks)

    removed: dict[_Ack, int] = await hub.acks.submit("ack", [mine], run, _own)
    return removed[mine]


@dataclass(frozen=True, slots=True, eq=False)
class _Ack:
    organ: str
    ids: list[int]


def _own(removed: dict[_Ack, int], acks: Sequence[_Ack]) -> dict[_Ack, int]:
    return {a: removed[a] for a in acks}


async def _ack_many(hub: Hub, acks: Sequence[_Ack]) -> dict[_Ack, int]:
    at = now()
    removed: dict[_Ack, int] = {}
    envelopes: dict[str, set[bytes]] = {}
    async with hub.engine.begin() as conn:
        for a in sorted(acks, key=lambda a: a.organ):  # rows locked in one order
            rows = (await run(conn, _REMOVE, {"organ": a.organ, "ids": a.ids})).rows
            removed[a] = len(rows)
            envelopes.setdefault(a.organ, set()).update(
                bytes(pid) for pid, kind in rows if kind == "envelope"
            )
        fetched = await record_fetches_many(conn, envelopes, at, inline_only=True)
    if fetched:
        hub.signer.poke()
        log.info("inline body fetched", organs=len(envelopes), packets=fetched)
    return removed


async def long_poll(
    hub: Hub, organ: str, wait: float, limit: int, acknowledged: Collection[int] = ()
) -> list[dict[str, Any]]:
    """The office's items, waiting for some up to ``wait`` seconds.

    ``acknowledged``: the ids this request has just acknowledged.  When they were the
    whole of the mailbox's last answer and nothing arrived since, the mailbox is known
    empty and the wait starts without reading it (:meth:`MailboxNotifier.known_empty`):
    a delivery costs one read, not two.

    An empty answer comes at a random point of the last :data:`WAIT_JITTER` of the wait:
    offices that began polling together (a hub restart, a network back) would otherwise
    all come back in the same second, every ``wait`` seconds, for as long as they run.
    """
    loop = asyncio.get_running_loop()
    spread = WAIT_JITTER * random.random()  # noqa: S311 (spreading load, not a secret)
    deadline = loop.time() + wait * (1 - spread)
    notifier = hub.notifier
    items: list[dict[str, Any]]
    with notifier.listen(organ) as woken:
        known_empty = notifier.known_empty(organ, acknowledged)
        while True:
            if known_empty:  # `woken` is left set if something arrived meanwhile
                known_empty, items = False, []
            else:
                woken.clear()
                token = notifier.reading(organ)
                async with hub.reader.connect() as conn:
                    items, whole = await read_items(hub, conn, organ, limit)
                notifier.read(organ, token, [i["id"] for i in items] if whole else None)
            left = deadline - loop.time()
            if items or left <= 0 or hub.notifier.closing:
                return items
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, RECHECK))
