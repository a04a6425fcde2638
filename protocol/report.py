"""Deliveries and lateness, computed from audit-log events: what auditors report on.

An auditor answers "did this directive reach every office, when, and what did each do
with it; which reports are late" from the log alone (DESIGN.md §5), never from the hub's
tables.  :class:`LogDeliveries` folds a packet's events -- ``packet_accepted``,
``body_fetched``, ``receipt`` -- into one :class:`DeliveryRecord` per (packet, recipient);
:func:`organ_report` sums them per organ and :func:`overdue` lists what is late now.
Both the auditor's command line (over its verified mirror of the log) and the hub's audit
page (over the log's own table) use this module, so the two can never count differently.

Which times count, and why
--------------------------
* **Arrival** is the ``packet_accepted`` event's time: from that moment the document waits
  in the recipient's mailbox.  An office that does not collect it for two days is two days
  late -- as a clerk who leaves the post unopened would be.
* **Handling** is the first office status that acts on the document: 02 (rejected), 03
  (registered), 04, 05 or 06.  Its time is the one the office *signed* in its receipt, not
  the time the hub logged it: a receipt written while the hub was unreachable counts from
  when the clerk acted.  Only receipts whose signature the caller verified are counted;
  the others are kept apart (:attr:`DeliveryRecord.unverified`).
* **Deadlines**: registration by :func:`protocol.policy.handling_deadline` (by urgency,
  working days, and the due date when it is earlier); and, when the sender set a due date
  (hạn xử lý), completion (06) by 17:00 Vietnam time on that date.  A rejection settles
  both: a refused document is not handled further.

Each delivery is then exactly one of ``on_time`` (every deadline that applies was met),
``late`` (one was missed; ``overdue`` if the delivery is still open), ``pending`` (no
deadline missed yet) or ``recalled`` (the sender withdrew it before it was handled).

Pure functions over parsed events: no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Final

from .audit import Event
from .errors import RemoteError
from .policy import VN_TZ, WORKDAY_END, handling_deadline
from .receipts import STATUS, Delivery, parse_office_receipt

__all__ = [
    "COUNTED_KINDS",
    "HANDLING_STATUSES",
    "OUTCOMES",
    "REGISTERED_STATUSES",
    "DeliveryRecord",
    "LogDeliveries",
    "OrganRow",
    "iso",
    "organ_report",
    "overdue",
    "totals",
    "vn_day_bounds",
]

#: Packet kinds that are deliveries of a document (a recall packet only asks for one back).
COUNTED_KINDS: Final = frozenset({"document", "update", "replace"})
#: Statuses that act on a document: the first of them is when it was handled.
HANDLING_STATUSES: Final = frozenset({"02", "03", "04", "05", "06"})
#: Statuses at or past registration (số đến given): 03 may be skipped by a system that
#: reports only later codes.
REGISTERED_STATUSES: Final = frozenset({"03", "04", "05", "06"})
OUTCOMES: Final = ("on_time", "late", "pending", "recalled")


def _end_of_day(day: date) -> int:
    return int(datetime.combine(day, WORKDAY_END, tzinfo=VN_TZ).timestamp())


def vn_day_bounds(first: date, last: date) -> tuple[int, int]:
    """Unix seconds of [00:00 on ``first``, 00:00 after ``last``), Vietnam time."""
    start = datetime.combine(first, datetime.min.time(), tzinfo=VN_TZ)
    end = datetime.combine(last, datetime.min.time(), tzinfo=VN_TZ)
    return int(start.timestamp()), int(end.timestamp()) + 86400


@dataclass(slots=True)
class DeliveryRecord:
    """One packet at one recipient, as the log tells it.  Times are Unix seconds."""

    packet_id: bytes
    sender: str
    recipient: str
    packet_kind: str
    urgency: int
    due: str | None
    accepted_at: int
    accepted_index: int
    fetched_at: int | None = None
    #: The verified office statuses in log order: (status, signed time, log index).
    steps: list[tuple[str, int, int]] = field(default_factory=list)
    #: Log indexes of receipts about this delivery whose signature did not verify.
    unverified: list[int] = field(default_factory=list)
    #: Statuses the state machine refused (out of order beyond repair): log indexes.
    refused_steps: list[int] = field(default_factory=list)
    #: The incoming number (số đến) of its 03 receipt.
    incoming_number: str | None = None
    _delivery: Delivery = field(default_factory=Delivery, repr=False)

    # -- what happened --------------------------------------------------------------

    @property
    def state(self) -> str:
        """The delivery state machine's state (``pending``, a status code, ``recalled``)."""
        return self._delivery.state

    def first(self, statuses: Collection[str]) -> int | None:
        """The earliest signed time of any of ``statuses``."""
        times = [at for status, at, _ in self.steps if status in statuses]
        return min(times) if times else None

    @property
    def received_at(self) -> int | None:
        """When the office's software had it: the fetch, or its first status if earlier."""
        times = [t for t in (self.fetched_at, self.first(STATUS.keys())) if t is not None]
        return min(times) if times else None

    @property
    def handled_at(self) -> int | None:
        return self.first(HANDLING_STATUSES)

    @property
    def registered_at(self) -> int | None:
        return self.first(REGISTERED_STATUSES)

    @property
    def completed_at(self) -> int | None:
        return self.first({"06"})

    @property
    def rejected_at(self) -> int | None:
        return self.first({"02"})

    @property
    def recalled(self) -> bool:
        return self.state == "recalled"

    # -- deadlines ------------------------------------------------------------------

    def deadline(self, holidays: Collection[date] = frozenset()) -> int:
        """When it had to be registered (handled): :func:`handling_deadline`."""
        due = date.fromisoformat(self.due) if self.due else None
        arrival = datetime.fromtimestamp(self.accepted_at, UTC)
        return int(handling_deadline(arrival, self.urgency, due, holidays=holidays).timestamp())

    def due_deadline(self) -> int | None:
        """When it had to be completed: 17:00 on the due date, if the sender set one."""
        return _end_of_day(date.fromisoformat(self.due)) if self.due else None

    def outcome(self, now: int, holidays: Collection[date] = frozenset()) -> str:
        """``on_time``, ``late``, ``pending`` or ``recalled`` (see the module docstring)."""
        handled = self.handled_at
        if self.recalled and handled is None:
            return "recalled"
        deadline = self.deadline(holidays)
        missed = (handled is not None and handled > deadline) or (
            handled is None and now > deadline
        )
        due = self.due_deadline()
        settled = self.rejected_at is not None
        if due is not None and not settled:
            completed = self.completed_at
            if completed is not None:
                missed = missed or completed > due
            elif not self.recalled:
                missed = missed or now > due
        if missed:
            return "late"
        if handled is None:
            return "pending"
        if due is not None and not settled and self.completed_at is None and not self.recalled:
            return "pending"
        return "on_time"

    def is_open(self) -> bool:
        """Still expected to move: not rejected, completed or recalled."""
        return self.state not in ("02", "06", "recalled")

    def is_overdue(self, now: int, holidays: Collection[date] = frozenset()) -> bool:
        """Late and still waiting for the office: what an auditor chases today."""
        if self.recalled or self.rejected_at is not None:
            return False
        if self.handled_at is None and now > self.deadline(holidays):
            return True
        due = self.due_deadline()
        return due is not None and self.completed_at is None and now > due

    def as_dict(self, now: int, holidays: Collection[date] = frozenset()) -> dict[str, Any]:
        """A JSON-ready summary (times as ISO 8601 in Vietnam time)."""
        return {
            "packet_id": _uuid_text(self.packet_id),
            "sender": self.sender,
            "recipient": self.recipient,
            "packet_kind": self.packet_kind,
            "urgency": self.urgency,
            "due": self.due,
            "accepted_at": iso(self.accepted_at),
            "fetched_at": iso(self.fetched_at),
            "received_at": iso(self.received_at),
            "registered_at": iso(self.registered_at),
            "completed_at": iso(self.completed_at),
            "rejected_at": iso(self.rejected_at),
            "state": self.state,
            "deadline": iso(self.deadline(holidays)),
            "due_deadline": iso(self.due_deadline()),
            "outcome": self.outcome(now, holidays),
            "overdue": self.is_overdue(now, holidays),
            "incoming_number": self.incoming_number,
            "steps": [{"status": s, "at": iso(at), "index": i} for s, at, i in self.steps],
            "unverified_receipts": list(self.unverified),
        }


def iso(ts: int | None) -> str | None:
    """Unix seconds as ISO 8601 in Vietnam time."""
    return None if ts is None else datetime.fromtimestamp(ts, VN_TZ).isoformat()


def _uuid_text(packet_id: bytes) -> str:
    h = packet_id.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class LogDeliveries:
    """Deliveries rebuilt from log events, fed in log order with :meth:`add`.

    A receipt event counts only when the caller says its signature verified
    (``receipt_ok``); a receipt that arrives before its packet's ``packet_accepted`` (it
    cannot, in an honest log) or about an organ the packet did not address creates no
    delivery and is listed in :attr:`orphans`.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[bytes, str], DeliveryRecord] = {}
        self._packets: dict[bytes, list[str]] = {}
        self.sent: dict[bytes, tuple[str, str, int]] = {}
        self.orphans: list[int] = []

    def add(self, index: int, event: Event, *, receipt_ok: bool = True) -> None:
        fields = event.fields
        if event.kind == "packet_accepted":
            pid = fields["packet_id"]
            if pid in self._packets:
                return  # an honest log accepts a packet once; keep the first
            self.sent[pid] = (fields["sender"], fields["packet_kind"], event.at)
            self._packets[pid] = list(fields["recipients"])
            for organ in fields["recipients"]:
                self._records[pid, organ] = DeliveryRecord(
                    packet_id=pid,
                    sender=fields["sender"],
                    recipient=organ,
                    packet_kind=fields["packet_kind"],
                    urgency=fields["urgency"],
                    due=fields.get("due"),
                    accepted_at=event.at,
                    accepted_index=index,
                    _delivery=Delivery(pid, organ),
                )
            return
        if event.kind not in ("body_fetched", "receipt"):
            return
        record = self._records.get((fields["packet_id"], fields["organ"]))
        if record is None:
            self.orphans.append(index)
            return
        if event.kind == "body_fetched":
            if record.fetched_at is None:
                record.fetched_at = event.at
            return
        if not receipt_ok:
            record.unverified.append(index)
            return
        try:
            receipt = parse_office_receipt(fields["receipt"]).receipt
            record._delivery.apply_receipt(receipt)
        except RemoteError:
            record.refused_steps.append(index)
            return
        record.steps.append((receipt.status, receipt.at, index))
        if receipt.status == "03":
            record.incoming_number = receipt.details.get("incoming_number")

    def records(self) -> list[DeliveryRecord]:
        """Every delivery, by acceptance order then recipient."""
        return sorted(self._records.values(), key=lambda r: (r.accepted_index, r.recipient))

    def packet(self, packet_id: bytes) -> list[DeliveryRecord]:
        return [self._records[packet_id, organ] for organ in self._packets.get(packet_id, [])]


@dataclass(slots=True)
class OrganRow:
    """One organ's line of the delivery report."""

    organ: str
    sent: int = 0
    addressed: int = 0
    received: int = 0
    registered: int = 0
    completed: int = 0
    rejected: int = 0
    on_time: int = 0
    late: int = 0
    overdue: int = 0
    pending: int = 0
    recalled: int = 0

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "organ",
        "sent",
        "addressed",
        "received",
        "registered",
        "completed",
        "rejected",
        "on_time",
        "late",
        "overdue",
        "pending",
        "recalled",
    )

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.COLUMNS}


def organ_report(
    records: Iterable[DeliveryRecord],
    *,
    now: int,
    start: int | None = None,
    end: int | None = None,
    organ: str | None = None,
    holidays: Collection[date] = frozenset(),
) -> list[OrganRow]:
    """Per organ: packets it sent and what became of the deliveries addressed to it.

    Only packets of :data:`COUNTED_KINDS` accepted in ``[start, end)`` count.  With
    ``organ``, only that organ's row.  Rows are sorted by organ code.
    """
    rows: dict[str, OrganRow] = {}
    senders: set[tuple[bytes, str]] = set()

    def row(code: str) -> OrganRow:
        found = rows.get(code)
        if found is None:
            found = rows[code] = OrganRow(code)
        return found

    for r in records:
        if r.packet_kind not in COUNTED_KINDS:
            continue
        if (start is not None and r.accepted_at < start) or (
            end is not None and r.accepted_at >= end
        ):
            continue
        if (r.packet_id, r.sender) not in senders and (organ is None or r.sender == organ):
            senders.add((r.packet_id, r.sender))
            row(r.sender).sent += 1
        if organ is not None and r.recipient != organ:
            continue
        line = row(r.recipient)
        line.addressed += 1
        line.received += r.received_at is not None
        line.registered += r.registered_at is not None
        line.completed += r.completed_at is not None
        line.rejected += r.rejected_at is not None
        outcome = r.outcome(now, holidays)
        setattr(line, outcome, getattr(line, outcome) + 1)
        line.overdue += r.is_overdue(now, holidays)
    return [rows[code] for code in sorted(rows)]


def overdue(
    records: Iterable[DeliveryRecord],
    *,
    now: int,
    organ: str | None = None,
    holidays: Collection[date] = frozenset(),
) -> list[DeliveryRecord]:
    """Deliveries late and still open at ``now``, the most overdue first."""
    found = [
        r
        for r in records
        if r.packet_kind in COUNTED_KINDS
        and (organ is None or organ in (r.recipient, r.sender))
        and r.is_overdue(now, holidays)
    ]

    def since(r: DeliveryRecord) -> int:
        missed = [r.deadline(holidays)] if r.handled_at is None else []
        due = r.due_deadline()
        if due is not None and r.completed_at is None:
            missed.append(due)
        return min(missed) if missed else now

    return sorted(found, key=lambda r: (since(r), r.accepted_index, r.recipient))


def totals(rows: Sequence[OrganRow]) -> OrganRow:
    """The sum of the rows, as a row named ``*``."""
    out = OrganRow("*")
    for line in rows:
        for name in OrganRow.COLUMNS[1:]:
            setattr(out, name, getattr(out, name) + getattr(line, name))
    return out
