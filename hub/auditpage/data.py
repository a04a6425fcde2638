"""What the audit page shows, read from the hub's database and checked against its log.

* :func:`search` finds packets by id, document reference, sender, recipient, dates,
  delivery state and lateness.  Candidates come from the ``packets`` and ``deliveries``
  tables (indexed, fast); the lateness shown for each is computed from the packet's
  *log* events (:mod:`protocol.report`), like the report's.
* :func:`packet_view` builds a packet's timeline from its audit-log events, each with its
  verification state: the entry's inclusion proof verified against the newest signed
  checkpoint (the note's signature checked with the hub's own key), each office receipt's
  signature verified against the signer's directory entry of the time (signed by the
  authority), the stored envelope against the digest the log names and the sender's
  signature.  Receipts the hub's tables hold but its log does not are listed apart: the
  page shows where the database and the log disagree rather than hide it.
* :func:`delivery_report` sums deliveries per organ over a date range from the log's
  entries, receipts counted only when their signature verifies.

Never any document content: the hub has none (bodies are sealed, and the envelope's
metadata is encrypted); the page shows routing data, ids, digests, codes and times.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from sqlalchemy import and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.auditlog import store
from hub.auditlog.models import LogEntry
from hub.context import Hub
from hub.models import DeliveryEvent, DeliveryRow, DirectoryHistory, Organ, Packet
from hub.packets import ACCEPTED
from protocol.audit import Event, parse_event
from protocol.bundle import log_verifier
from protocol.checkpoint import Checkpoint, open_checkpoint
from protocol.directory import DirectoryEntry
from protocol.errors import LienthongError, RemoteError
from protocol.merkle import inclusion_proof, leaf_hash, verify_inclusion
from protocol.packet import ENVELOPE_MAX, Envelope, parse_envelope
from protocol.policy import VN_TZ, Secrecy, Urgency
from protocol.receipts import STATUS, ParsedReceipt, parse_office_receipt, verify_office_receipt
from protocol.report import (
    DeliveryRecord,
    LogDeliveries,
    OrganRow,
    organ_report,
    totals,
    vn_day_bounds,
)

#: Most packets one search lists.
SEARCH_LIMIT: Final = 200
#: Most candidates examined when a filter is applied after the query (reference, lateness).
CANDIDATES: Final = 2000
#: Entries are sequenced within seconds of their event; the report's scan takes a margin.
_SEQUENCING_MARGIN: Final = 3600

STATE_LABELS: Final = {
    "pending": "chưa có biên nhận",
    "recalled": "đã thu hồi",
    **{code: s.vi for code, s in STATUS.items()},
}
OUTCOME_LABELS: Final = {
    "on_time": "Đúng hạn",
    "late": "Trễ hạn",
    "pending": "Đang trong hạn",
    "recalled": "Đã thu hồi",
}
KIND_LABELS: Final = {
    "packet_accepted": "Hub tiếp nhận gói tin",
    "body_fetched": "Nơi nhận đã tải nội dung (đã mã hóa)",
    "receipt": "Biên nhận của cơ quan",
    "email": "Thư điện tử",
    "policy_refused": "Bị từ chối theo chính sách",
    "directory": "Thay đổi danh bạ",
}
PACKET_KIND_LABELS: Final = {
    "document": "Văn bản mới",
    "recall": "Thu hồi",
    "update": "Cập nhật",
    "replace": "Thay thế",
}


def vn_time(ts: int | None) -> str:
    """``dd/mm/YYYY HH:MM`` in Vietnam time (empty for None)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, VN_TZ).strftime("%d/%m/%Y %H:%M")


def vn_date(iso_day: str | None) -> str:
    """``YYYY-MM-DD`` as ``dd/mm/YYYY`` (empty for None; anything else unchanged)."""
    if not iso_day:
        return ""
    try:
        return date.fromisoformat(iso_day).strftime("%d/%m/%Y")
    except ValueError:
        return iso_day


def packet_text(packet_id: bytes) -> str:
    return str(uuid.UUID(bytes=packet_id))


def reference_text(envelope: Envelope | None) -> str:
    """Số và ký hiệu as printed: ``05-NQ/TU`` (or the type alone), dated when known."""
    if envelope is None or envelope.routing.reference is None:
        return ""
    ref = envelope.routing.reference
    if ref.number and ref.notation:
        text = f"{ref.number}-{ref.notation}"
    else:
        text = ref.notation or ref.number or ref.doc_type
    return f"{text} ngày {vn_date(ref.date)}" if ref.date else text


def _envelope(raw: bytes) -> Envelope | None:
    try:
        return parse_envelope(raw, max_size=max(ENVELOPE_MAX, len(raw)))
    except RemoteError:
        return None


# --- directory entries of the time --------------------------------------------------------


class Entries:
    """Signed directory entries by organ, each verified with the authority key."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._by_organ: dict[str, list[tuple[int, DirectoryEntry, bytes]]] = {}

    async def load(self, conn: AsyncConnection, organs: Iterable[str]) -> None:
        wanted = sorted(set(organs) - set(self._by_organ))
        for start in range(0, len(wanted), 500):
            rows = await conn.execute(
                select(DirectoryHistory.organ, DirectoryHistory.issued_at, DirectoryHistory.entry)
                .where(DirectoryHistory.organ.in_(wanted[start : start + 500]))
                .order_by(DirectoryHistory.organ, DirectoryHistory.serial)
            )
            for organ, issued_at, raw in rows:
                try:
                    entry = self._hub.entries.verify(bytes(raw))
                except RemoteError:
                    continue  # an entry not signed by the authority verifies nothing
                digest = hashlib.sha256(bytes(raw)).digest()
                self._by_organ.setdefault(organ, []).append((int(issued_at), entry, digest))
        for organ in wanted:
            self._by_organ.setdefault(organ, [])

    def at(self, organ: str, when: int) -> DirectoryEntry | None:
        """The organ's entry as it stood at ``when`` (the newest issued by then)."""
        found = self.digest_at(organ, when)
        return None if found is None else found[0]

    def digest_at(self, organ: str, when: int) -> tuple[DirectoryEntry, bytes] | None:
        """The entry as it stood at ``when`` and the SHA-256 of its signed bytes."""
        found: tuple[DirectoryEntry, bytes] | None = None
        for issued_at, entry, digest in self._by_organ.get(organ, []):
            if issued_at <= when:
                found = (entry, digest)
        return found


#: Receipt checks already done, by (event bytes, signer entry bytes, sender): a pure
#: function of its key, so a bounded memo makes a second report of a busy month cheap.
_CHECKED: OrderedDict[bytes, str | None] = OrderedDict()
_CHECKED_MAX: Final = 200_000
_CHECKED_LOCK: Final = threading.Lock()  # reports fold in worker threads


def check_receipt(event: Event, entries: Entries, sender: str | None) -> str | None:
    """None when the receipt event's signature verifies, else why not (Vietnamese)."""
    try:
        parsed = parse_office_receipt(event.fields["receipt"])
        signer = parsed.receipt.signer
        found = entries.digest_at(signer, event.at)
        if found is None:
            return f"không có mục danh bạ của {signer} tại thời điểm đó"
        entry, entry_digest = found
        key = hashlib.sha256(event.raw + entry_digest + (sender or "").encode()).digest()
        with _CHECKED_LOCK:
            if key in _CHECKED:
                _CHECKED.move_to_end(key)
                return _CHECKED[key]
        error = _verify_receipt(event, parsed, entry, sender)
        with _CHECKED_LOCK:
            _CHECKED[key] = error
            if len(_CHECKED) > _CHECKED_MAX:
                _CHECKED.popitem(last=False)
        return error
    except LienthongError as exc:
        return f"{getattr(exc, 'code', 'error')}: {getattr(exc, 'detail', exc)}"


def _verify_receipt(
    event: Event, parsed: ParsedReceipt, entry: DirectoryEntry, sender: str | None
) -> str | None:
    try:
        verify_office_receipt(
            parsed,
            entry,
            packet_id=event.fields["packet_id"],
            envelope_digest=event.fields["envelope_digest"],
            sender=sender,
            received_at=event.at,
        )
        if (parsed.receipt.status, parsed.receipt.organ) != (
            event.fields["status"],
            event.fields["organ"],
        ):
            return "mục nhật ký ghi trạng thái khác với biên nhận đã ký"
    except LienthongError as exc:
        return f"{getattr(exc, 'code', 'error')}: {getattr(exc, 'detail', exc)}"
    return None


# --- the newest checkpoint ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointView:
    size: int
    root: str
    signed_at: int | None
    witnesses: int
    error: str | None = None


async def current_checkpoint(
    hub: Hub, conn: AsyncConnection, origin: str
) -> tuple[Checkpoint | None, CheckpointView]:
    """The newest checkpoint, its log signature verified with the hub's own key."""
    published = await store.published_checkpoint(conn)
    if published is None:
        return None, CheckpointView(0, "", None, 0, "nhật ký chưa có điểm kiểm tra nào")
    stored, note = published
    try:
        checkpoint = open_checkpoint(note.encode(), log_verifier(hub.keys.hub.public_key(), origin))
    except RemoteError as exc:
        return None, CheckpointView(stored.size, stored.root.hex(), None, 0, exc.detail)
    signed_at = None
    for line in checkpoint.extensions:
        if line.startswith("time ") and line[5:].isdigit():
            signed_at = int(line[5:])
    witnesses = note.count("\n— lienthong.witness/")
    return checkpoint, CheckpointView(
        checkpoint.size, checkpoint.root_hash.hex(), signed_at, witnesses
    )


# --- a packet's timeline ------------------------------------------------------------------


@dataclass(slots=True)
class EventView:
    index: int
    at: int
    kind: str
    title: str
    organ: str = ""
    status: str = ""
    detail: str = ""
    included: bool = False
    inclusion_error: str | None = None
    #: None: not a signed receipt; True/False: its signature verified or not.
    signature: bool | None = None
    signature_error: str | None = None
    signer: str = ""
    signed_at: int | None = None

    @property
    def verified(self) -> bool:
        return self.included and self.signature is not False


@dataclass(slots=True)
class RecipientView:
    organ: str
    name: str
    state: str
    state_label: str
    received_at: int | None
    registered_at: int | None
    completed_at: int | None
    rejected_at: int | None
    deadline: int
    due_deadline: int | None
    outcome: str
    outcome_label: str
    overdue: bool
    incoming_number: str | None


@dataclass(slots=True)
class PacketView:
    packet_id: str
    sender: str
    sender_name: str
    kind: str
    kind_label: str
    urgency: int
    urgency_label: str
    secrecy_label: str
    due: str | None
    reference: str
    accepted_at: int | None
    envelope_digest: str
    body_size: int
    envelope_ok: bool
    envelope_error: str | None
    checkpoint: CheckpointView
    events: list[EventView] = field(default_factory=list)
    recipients: list[RecipientView] = field(default_factory=list)
    #: Office receipts in the hub's tables that its log does not hold.
    unlogged: list[str] = field(default_factory=list)
    log_error: str | None = None

    @property
    def all_verified(self) -> bool:
        return (
            self.log_error is None
            and self.checkpoint.error is None
            and self.envelope_ok
            and not self.unlogged
            and all(e.verified for e in self.events)
        )


def _title(event: Event) -> tuple[str, str]:
    f = event.fields
    if event.kind == "receipt":
        status = f["status"]
        label = STATUS[status].vi if status in STATUS else status
        return f"Biên nhận {status} — {label}", status
    if event.kind == "email":
        way = "gửi đi" if f["direction"] == "out" else "nhận về"
        return f"Thư điện tử {way} ({f['state']}, lần {f['attempt']})", ""
    if event.kind == "policy_refused":
        return f"Bị từ chối theo chính sách: {f['code']}", ""
    return KIND_LABELS.get(event.kind, event.kind), ""


async def organ_names(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(codes))
    out: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = await conn.execute(
            select(Organ.code, Organ.name).where(Organ.code.in_(wanted[start : start + 500]))
        )
        out.update({code: name for code, name in rows})
    return out


async def packet_view(hub: Hub, origin: str, packet_id: bytes, now: int) -> PacketView | None:
    """The packet's timeline with every event's verification state, or None if unknown."""
    async with hub.sessions() as session:
        p = await session.scalar(
            select(Packet).where(Packet.id == packet_id, Packet.state == ACCEPTED)
        )
    if p is None:
        return None
    async with store.reading(hub.engine) as conn:
        envelope = _envelope(bytes(p.envelope))
        checkpoint, cp_view = await current_checkpoint(hub, conn, origin)
        size = checkpoint.size if checkpoint is not None else 0
        found = await store.packet_entries(conn, packet_id, size) if size else []
        log_error = None
        proofs: list[list[bytes]] = []
        try:
            proofs = await store.with_hashes(
                conn, lambda r: [inclusion_proof(i, size, r) for i, _ in found]
            )
        except LienthongError as exc:
            log_error = f"nhật ký không trả được bằng chứng: {exc}"
            proofs = [[] for _ in found]
        events: list[tuple[int, Event, EventView]] = []
        organs = {p.sender}
        for (index, data), proof in zip(found, proofs, strict=True):
            try:
                event = parse_event(data)
            except RemoteError as exc:
                events_view = EventView(index, 0, "?", f"Mục nhật ký hỏng: {exc.detail}")
                events.append((index, Event("?", 0, {}, data), events_view))
                continue
            title, status = _title(event)
            view = EventView(
                index, event.at, event.kind, title, event.fields.get("organ", ""), status
            )
            if checkpoint is not None and log_error is None:
                try:
                    verify_inclusion(leaf_hash(data), index, size, proof, checkpoint.root_hash)
                    view.included = True
                except RemoteError as exc:
                    view.inclusion_error = exc.detail
            else:
                view.inclusion_error = log_error or cp_view.error
            if event.kind == "receipt":
                try:
                    r = parse_office_receipt(event.fields["receipt"]).receipt
                    view.signer, view.signed_at = r.signer, r.at
                    organs.add(r.signer)
                    parts = []
                    if r.details.get("incoming_number"):
                        parts.append(f"số đến {r.details['incoming_number']}")
                    if r.reason:
                        parts.append(f"lý do: {r.reason}")
                    view.detail = "; ".join(parts)
                except RemoteError as exc:
                    view.signature, view.signature_error = False, exc.detail
            if event.kind == "packet_accepted":
                organs.update(event.fields["recipients"])
            events.append((index, event, view))
        entries = Entries(hub)
        await entries.load(conn, organs)
        for _, event, view in events:
            if event.kind == "receipt" and view.signature is None:
                error = check_receipt(event, entries, p.sender)
                view.signature = error is None
                view.signature_error = error
        logged = {
            parse_office_receipt(e.fields["receipt"]).digest
            for _, e, v in events
            if e.kind == "receipt" and v.signer
        }
        db_receipts = await conn.execute(
            select(DeliveryEvent.organ, DeliveryEvent.status, DeliveryEvent.digest).where(
                DeliveryEvent.packet_id == packet_id, DeliveryEvent.source == "office"
            )
        )
        unlogged = [
            f"{organ}: {status}"
            for organ, status, digest in db_receipts
            if bytes(digest) not in logged
        ]
        names = await organ_names(conn, organs)
    envelope_ok, envelope_error = True, None
    accepted = next((e for _, e, _v in events if e.kind == "packet_accepted"), None)
    if envelope is None:
        envelope_ok, envelope_error = False, "phong bì lưu trữ không đọc được"
    elif accepted is None or accepted.fields["envelope_digest"] != envelope.digest:
        envelope_ok, envelope_error = False, "phong bì lưu trữ khác với phong bì nhật ký ghi nhận"
    else:
        entry = entries.at(envelope.sender, accepted.at)
        try:
            if entry is None:
                raise RemoteError("organ_unknown", f"{envelope.sender} has no entry then")
            envelope.verify_sender(entry, at=accepted.at)
        except RemoteError as exc:
            envelope_ok, envelope_error = False, f"chữ ký người gửi: {exc.code}"
    deliveries = LogDeliveries()
    for index, event, view in events:
        if view.included and event.kind != "?":
            deliveries.add(index, event, receipt_ok=view.signature is not False)
    recipients = [
        RecipientView(
            organ=r.recipient,
            name=names.get(r.recipient, r.recipient),
            state=r.state,
            state_label=STATE_LABELS.get(r.state, r.state),
            received_at=r.received_at,
            registered_at=r.registered_at,
            completed_at=r.completed_at,
            rejected_at=r.rejected_at,
            deadline=r.deadline(),
            due_deadline=r.due_deadline(),
            outcome=r.outcome(now),
            outcome_label=OUTCOME_LABELS[r.outcome(now)],
            overdue=r.is_overdue(now),
            incoming_number=r.incoming_number,
        )
        for r in deliveries.packet(packet_id)
    ]
    return PacketView(
        packet_id=packet_text(packet_id),
        sender=p.sender,
        sender_name=names.get(p.sender, p.sender),
        kind=p.kind,
        kind_label=PACKET_KIND_LABELS.get(p.kind, p.kind),
        urgency=p.urgency,
        urgency_label=_urgency(p.urgency),
        secrecy_label=_secrecy(p.secrecy),
        due=envelope.routing.due if envelope else None,
        reference=reference_text(envelope),
        accepted_at=p.accepted_at,
        envelope_digest=bytes(p.envelope_digest).hex(),
        body_size=p.body_size,
        envelope_ok=envelope_ok,
        envelope_error=envelope_error,
        checkpoint=cp_view,
        events=[v for _, _, v in events],
        recipients=recipients,
        unlogged=unlogged,
        log_error=log_error,
    )


def _urgency(level: int) -> str:
    try:
        return Urgency(level).label
    except ValueError:
        return str(level)


def _secrecy(level: int) -> str:
    try:
        return Secrecy(level).label
    except ValueError:
        return str(level)


# --- search -------------------------------------------------------------------------------

SEARCH_STATES: Final = ("pending", "01", "02", "03", "04", "05", "06", "13", "recalled")


@dataclass(slots=True)
class Criteria:
    """What the search form asks; :func:`Criteria.parse` collects the errors."""

    packet: str = ""
    ref: str = ""
    sender: str = ""
    recipient: str = ""
    date_from: date | None = None
    date_to: date | None = None
    status: str = ""
    overdue: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.packet
            or self.ref
            or self.sender
            or self.recipient
            or self.date_from
            or self.date_to
            or self.status
            or self.overdue
        )

    @classmethod
    def parse(cls, query: Any) -> Criteria:
        def text(name: str, limit: int = 64) -> str:
            value = str(query.get(name, "")).strip()
            return value[:limit]

        c = cls(
            packet=text("packet", 40).lower(),
            ref=text("ref"),
            sender=text("sender"),
            recipient=text("recipient"),
            status=text("status", 16),
            overdue=query.get("overdue") in ("1", "on", "true"),
        )
        for name in ("from", "to"):
            raw = text(name, 10)
            if not raw:
                continue
            try:
                value = date.fromisoformat(raw)
            except ValueError:
                c.errors.append(f"Ngày không hợp lệ: {raw} (dạng YYYY-MM-DD)")
                continue
            if name == "from":
                c.date_from = value
            else:
                c.date_to = value
        if c.status and c.status not in SEARCH_STATES:
            c.errors.append(f"Trạng thái không hợp lệ: {c.status}")
            c.status = ""
        if c.packet:
            hexed = c.packet.replace("-", "")
            if (
                len(hexed) < 8
                or len(hexed) > 32
                or any(ch not in "0123456789abcdef" for ch in hexed)
            ):
                c.errors.append("Mã gói tin gồm 8 đến 32 chữ số thập lục phân (hoặc một UUID)")
                c.packet = ""
        return c


@dataclass(slots=True)
class SearchRow:
    packet_id: str
    reference: str
    kind_label: str
    sender: str
    sender_name: str
    accepted_at: int | None
    urgency_label: str
    due: str | None
    recipients: list[tuple[str, str, str, bool]]
    overdue: int


async def search(hub: Hub, criteria: Criteria, now: int) -> tuple[list[SearchRow], bool]:
    """Packets matching ``criteria``, newest first; and whether the list was cut short."""
    query = select(Packet).where(Packet.state == ACCEPTED)
    if criteria.packet:
        hexed = criteria.packet.replace("-", "")
        prefix = bytes.fromhex(hexed[: len(hexed) - len(hexed) % 2])
        query = query.where(func.substr(Packet.id, 1, len(prefix)) == prefix)
    if criteria.sender:
        query = query.where(Packet.sender == criteria.sender)
    if criteria.recipient or criteria.status:
        conditions = [DeliveryRow.packet_id == Packet.id]
        if criteria.recipient:
            conditions.append(DeliveryRow.organ == criteria.recipient)
        if criteria.status:
            conditions.append(DeliveryRow.state == criteria.status)
        query = query.where(exists().where(and_(*conditions)))
    if criteria.date_from or criteria.date_to:
        first = criteria.date_from or date(1970, 1, 2)
        last = criteria.date_to or date(9999, 12, 30)
        start, end = vn_day_bounds(first, last)
        query = query.where(Packet.accepted_at >= start, Packet.accepted_at < end)
    post_filter = bool(criteria.ref) or criteria.overdue
    query = query.order_by(Packet.accepted_at.desc(), Packet.id).limit(
        CANDIDATES if post_filter else SEARCH_LIMIT + 1
    )
    rows: list[SearchRow] = []
    truncated = False
    async with hub.sessions() as session:
        packets = list((await session.scalars(query)).all())
    async with store.reading(hub.engine) as conn:
        if not post_filter and len(packets) > SEARCH_LIMIT:
            packets, truncated = packets[:SEARCH_LIMIT], True
        envelopes = {p.id: _envelope(bytes(p.envelope)) for p in packets}
        if criteria.ref:
            needle = criteria.ref.casefold()
            packets = [p for p in packets if needle in reference_text(envelopes[p.id]).casefold()]
        records = await _log_records(hub, conn, [p.id for p in packets])
        names = await organ_names(
            conn, {p.sender for p in packets} | {r.recipient for rs in records.values() for r in rs}
        )
    for p in packets:
        envelope = envelopes[p.id]
        recipients = []
        late = 0
        for r in records.get(p.id, []):
            is_overdue = r.is_overdue(now)
            late += is_overdue
            recipients.append(
                (
                    r.recipient,
                    names.get(r.recipient, r.recipient),
                    STATE_LABELS.get(r.state, r.state),
                    is_overdue,
                )
            )
        if criteria.overdue and not late:
            continue
        rows.append(
            SearchRow(
                packet_id=packet_text(p.id),
                reference=reference_text(envelope),
                kind_label=PACKET_KIND_LABELS.get(p.kind, p.kind),
                sender=p.sender,
                sender_name=names.get(p.sender, p.sender),
                accepted_at=p.accepted_at,
                urgency_label=_urgency(p.urgency),
                due=envelope.routing.due if envelope else None,
                recipients=recipients,
                overdue=late,
            )
        )
        if len(rows) >= SEARCH_LIMIT:
            truncated = True
            break
    return rows, truncated


async def _log_events(
    conn: AsyncConnection, packet_ids: Sequence[bytes]
) -> list[tuple[int, Event]]:
    """Every logged event of these packets, in log order (unparseable entries skipped)."""
    events: list[tuple[int, Event]] = []
    for start in range(0, len(packet_ids), 500):
        rows = await conn.execute(
            select(LogEntry.idx, LogEntry.data).where(
                LogEntry.packet_id.in_(list(packet_ids[start : start + 500]))
            )
        )
        raw = [(int(idx), bytes(data)) for idx, data in rows]
        events.extend(await asyncio.to_thread(_parse_all, raw))
    events.sort(key=lambda item: item[0])
    return events


def _parse_all(rows: Sequence[tuple[int, bytes]]) -> list[tuple[int, Event]]:
    """Parse entries (in a worker thread: a month of a province is seconds of CPU, and
    the hub's event loop must keep answering meanwhile)."""
    out: list[tuple[int, Event]] = []
    for idx, data in rows:
        try:
            out.append((idx, parse_event(data)))
        except RemoteError:
            continue
    return out


def _accepted_between(rows: Sequence[bytes], start: int, end: int) -> list[bytes]:
    wanted: list[bytes] = []
    for data in rows:
        if b"packet_accepted" not in data:  # cheap: most entries are receipts and fetches
            continue
        try:
            event = parse_event(data)
        except RemoteError:
            continue
        if event.kind == "packet_accepted" and start <= event.at < end:
            wanted.append(event.fields["packet_id"])
    return wanted


async def _fold(
    hub: Hub, conn: AsyncConnection, events: Sequence[tuple[int, Event]]
) -> tuple[LogDeliveries, int, int]:
    """Deliveries from events, receipts counted only when their signature verifies;
    also (receipts checked, receipts that failed)."""
    signers: set[str] = set()
    senders: dict[bytes, str] = {}
    for _, event in events:
        if event.kind == "packet_accepted":
            senders[event.fields["packet_id"]] = event.fields["sender"]
        elif event.kind == "receipt":
            try:
                signers.add(parse_office_receipt(event.fields["receipt"]).receipt.signer)
            except RemoteError:
                continue
    entries = Entries(hub)
    await entries.load(conn, signers)
    return await asyncio.to_thread(_fold_events, events, entries, senders)


def _fold_events(
    events: Sequence[tuple[int, Event]], entries: Entries, senders: dict[bytes, str]
) -> tuple[LogDeliveries, int, int]:
    deliveries = LogDeliveries()
    checked = failed = 0
    for index, event in events:
        ok = True
        if event.kind == "receipt":
            checked += 1
            ok = check_receipt(event, entries, senders.get(event.fields["packet_id"])) is None
            failed += not ok
        deliveries.add(index, event, receipt_ok=ok)
    return deliveries, checked, failed


async def _log_records(
    hub: Hub, conn: AsyncConnection, packet_ids: Sequence[bytes]
) -> dict[bytes, list[DeliveryRecord]]:
    """The deliveries of these packets as their log events tell."""
    deliveries, _, _ = await _fold(hub, conn, await _log_events(conn, packet_ids))
    return {pid: deliveries.packet(pid) for pid in packet_ids}


# --- the delivery report ------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    first: date
    last: date
    organ: str | None
    rows: list[OrganRow]
    total: OrganRow
    names: dict[str, str]
    receipts_checked: int
    receipts_failed: int
    entries_read: int


async def delivery_report(hub: Hub, first: date, last: date, organ: str | None, now: int) -> Report:
    """Deliveries of packets accepted from ``first`` to ``last`` (Vietnam dates), per organ."""
    start, end = vn_day_bounds(first, last)
    async with store.reading(hub.engine) as conn:
        rows = await conn.execute(
            select(LogEntry.idx, LogEntry.data)
            .where(
                LogEntry.packet_id.is_not(None),
                LogEntry.created_at >= start - _SEQUENCING_MARGIN,
                LogEntry.created_at < end + _SEQUENCING_MARGIN,
            )
            .order_by(LogEntry.idx)
        )
        scanned = [bytes(data) for _, data in rows]
        wanted = await asyncio.to_thread(_accepted_between, scanned, start, end)
        events = await _log_events(conn, wanted)
        deliveries, checked, failed = await _fold(hub, conn, events)
        table = organ_report(deliveries.records(), now=now, start=start, end=end, organ=organ)
        names = await organ_names(conn, [r.organ for r in table])
    return Report(
        first=first,
        last=last,
        organ=organ,
        rows=table,
        total=totals(table),
        names=names,
        receipts_checked=checked,
        receipts_failed=failed,
        entries_read=len(events),
    )


CSV_HEADERS: Final = (
    ("organ", "Mã cơ quan"),
    ("name", "Tên cơ quan"),
    ("sent", "Đã gửi"),
    ("addressed", "Được gửi đến"),
    ("received", "Đã nhận"),
    ("registered", "Đã vào sổ"),
    ("completed", "Hoàn thành"),
    ("rejected", "Từ chối"),
    ("on_time", "Đúng hạn"),
    ("late", "Trễ hạn"),
    ("overdue", "Quá hạn chưa xử lý"),
    ("pending", "Đang trong hạn"),
    ("recalled", "Đã thu hồi"),
)


def report_csv(report: Report) -> str:
    """The report as CSV (UTF-8, Vietnamese headers), with a total line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([label for _, label in CSV_HEADERS])
    for row in [*report.rows, report.total]:
        doc = row.as_dict()
        doc["name"] = "Tổng cộng" if row.organ == "*" else report.names.get(row.organ, "")
        writer.writerow([_csv_safe(doc[key]) for key, _ in CSV_HEADERS])
    return out.getvalue()


def _csv_safe(value: Any) -> Any:
    """Defuse spreadsheet formulas in text cells (organ names come from an admin)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
