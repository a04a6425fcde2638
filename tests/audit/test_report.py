"""Deliveries, lateness and key-transparency changes from log events (pure functions).

Times: ``T0`` is Monday 16 June 2025 07:00 in Vietnam (00:00 UTC).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from protocol.audit import Event, encode_event, parse_event
from protocol.directory import KeyRecord
from protocol.keys import SigningPrivateKey
from protocol.packet import new_packet_id
from protocol.receipts import OfficeReceipt, sign_office_receipt
from protocol.report import LogDeliveries, organ_report, overdue, totals
from protocol.transparency import diff_entries, foreign_keys
from tests.protocol.builders import T0, Office, make_office

HOUR = 3600
DAY = 24 * HOUR
MONDAY_10 = T0 + 3 * HOUR  # 10:00 in Vietnam
AUTHORITY = SigningPrivateKey.generate()
PROVINCE = make_office("000.00.00.H41", "Văn phòng Tỉnh ủy", AUTHORITY)
XA = make_office("000.00.12.H41", "Đảng ủy xã Yên Lạc", AUTHORITY)
TAM_HONG = make_office("000.00.13.H41", "Đảng ủy xã Tam Hồng", AUTHORITY)


def accepted(pid: bytes, at: int, urgency: int = 0, due: str | None = None, *to: Office) -> Event:
    return parse_event(
        encode_event(
            "packet_accepted", at, packet_id=pid, envelope_digest=bytes(32),
            sender=PROVINCE.code, recipients=[o.code for o in (to or (XA,))],
            packet_kind="document", urgency=urgency, secrecy=0, due=due, created=at,
            body_size=1, body_sha256=bytes(32), transport="http",
        )
    )  # fmt: skip


def receipt(pid: bytes, office: Office, status: str, at: int, **details: str) -> Event:
    signed = sign_office_receipt(
        OfficeReceipt(
            packet_id=pid,
            envelope_digest=bytes(32),
            organ=office.code,
            signer=office.code,
            signer_kid=office.signing.kid,
            status=status,
            at=at,
            reason="Sai nơi nhận" if status == "02" else None,
            details=details,
        ),
        office.signing,
    )
    return parse_event(
        encode_event(
            "receipt", at + 5, packet_id=pid, envelope_digest=bytes(32), organ=office.code,
            status=status, receipt=signed,
        )
    )  # fmt: skip


def fetched(pid: bytes, office: Office, at: int) -> Event:
    return parse_event(
        encode_event(
            "body_fetched", at, packet_id=pid, envelope_digest=bytes(32), organ=office.code
        )
    )


def fold(*events: Event, ok: bool = True) -> LogDeliveries:
    d = LogDeliveries()
    for i, e in enumerate(events):
        d.add(i, e, receipt_ok=ok)
    return d


def test_deadlines_follow_urgency_working_days_and_due_dates() -> None:
    pid = new_packet_id()
    cases = [
        (0, None, MONDAY_10, T0 + DAY + 10 * HOUR),  # thường: Tuesday 17:00
        (1, None, MONDAY_10, T0 + 10 * HOUR),  # khẩn: Monday 17:00
        (3, None, MONDAY_10, MONDAY_10 + 2 * HOUR),  # hỏa tốc: arrival + 2 h
        (
            1,
            None,
            T0 + 4 * DAY + 11 * HOUR,
            T0 + 7 * DAY + 10 * HOUR,
        ),  # Friday 18:00 → Monday 17:00
        (0, "2025-06-16", MONDAY_10, T0 + 10 * HOUR),  # due Monday cuts Tuesday's deadline
    ]
    for urgency, due, at, deadline in cases:
        [record] = fold(accepted(pid, at, urgency, due)).records()
        assert record.deadline() == deadline, (urgency, due)
    [record] = fold(accepted(pid, MONDAY_10, 0)).records()
    # a holiday on Tuesday moves a thường deadline to Wednesday
    assert record.deadline({date(2025, 6, 17)}) == T0 + 2 * DAY + 10 * HOUR


def test_outcomes() -> None:
    pid = new_packet_id()
    base = accepted(pid, MONDAY_10, 1, None)  # khẩn: registered by Monday 17:00
    on_time = fold(base, fetched(pid, XA, MONDAY_10 + 60), receipt(pid, XA, "01", MONDAY_10 + 90),
                   receipt(pid, XA, "03", MONDAY_10 + HOUR, incoming_number="125"))  # fmt: skip
    [r] = on_time.records()
    assert (r.state, r.outcome(T0 + 30 * DAY), r.incoming_number) == ("03", "on_time", "125")
    assert r.received_at == MONDAY_10 + 60
    late = fold(base, receipt(pid, XA, "03", T0 + DAY, incoming_number="7"))
    assert late.records()[0].outcome(T0 + 30 * DAY) == "late"
    waiting = fold(base)
    assert waiting.records()[0].outcome(MONDAY_10 + HOUR) == "pending"
    assert not waiting.records()[0].is_overdue(MONDAY_10 + HOUR)
    assert waiting.records()[0].outcome(T0 + DAY) == "late"
    assert waiting.records()[0].is_overdue(T0 + DAY)
    # a rejection in time settles the delivery, due date or not
    due = accepted(pid, MONDAY_10, 0, "2025-06-20")
    rejected = fold(due, receipt(pid, XA, "02", MONDAY_10 + HOUR))
    assert rejected.records()[0].outcome(T0 + 30 * DAY) == "on_time"
    assert not rejected.records()[0].is_overdue(T0 + 30 * DAY)
    # with a due date, registration alone is not the end: completion is due too
    registered = fold(due, receipt(pid, XA, "03", MONDAY_10 + HOUR, incoming_number="9"))
    assert registered.records()[0].outcome(T0 + 2 * DAY) == "pending"
    assert registered.records()[0].outcome(T0 + 5 * DAY) == "late"
    assert registered.records()[0].is_overdue(T0 + 5 * DAY)
    done = fold(due, receipt(pid, XA, "03", MONDAY_10 + HOUR, incoming_number="9"),
                receipt(pid, XA, "06", T0 + 3 * DAY))  # fmt: skip
    assert done.records()[0].outcome(T0 + 30 * DAY) == "on_time"
    # a receipt whose signature the caller could not verify does not count
    unverified = fold(base, receipt(pid, XA, "03", MONDAY_10 + HOUR, incoming_number="1"), ok=False)
    [u] = unverified.records()
    assert u.state == "pending"
    assert u.unverified == [1]


def test_organ_report_and_overdue() -> None:
    a, b = new_packet_id(), new_packet_id()
    events = [
        accepted(a, MONDAY_10, 0, None, XA, TAM_HONG),
        receipt(a, XA, "01", MONDAY_10 + 60),
        receipt(a, XA, "03", MONDAY_10 + HOUR, incoming_number="1"),
        receipt(a, XA, "06", MONDAY_10 + 2 * HOUR),
        accepted(b, MONDAY_10 + DAY, 3, None, TAM_HONG),
        receipt(b, TAM_HONG, "02", MONDAY_10 + DAY + HOUR),
    ]
    records = fold(*events).records()
    now = T0 + 10 * DAY
    rows = {r.organ: r for r in organ_report(records, now=now)}
    assert rows[PROVINCE.code].sent == 2
    assert rows[XA.code].as_dict() == {
        "organ": XA.code, "sent": 0, "addressed": 1, "received": 1, "registered": 1,
        "completed": 1, "rejected": 0, "on_time": 1, "late": 0, "overdue": 0, "pending": 0,
        "recalled": 0,
    }  # fmt: skip
    th = rows[TAM_HONG.code]
    assert (th.addressed, th.rejected, th.late, th.overdue, th.received) == (2, 1, 1, 1, 1)
    assert totals(list(rows.values())).addressed == 3
    only = organ_report(records, now=now, organ=TAM_HONG.code)
    assert [r.organ for r in only] == [TAM_HONG.code]
    # the date range counts packets accepted in it
    assert organ_report(records, now=now, start=MONDAY_10 + HOUR)[0].sent == 1
    late = overdue(records, now=now)
    assert [(r.packet_id, r.recipient) for r in late] == [(a, TAM_HONG.code)]


def test_directory_changes() -> None:
    entry = PROVINCE.entry
    assert [c.kind for c in diff_entries(None, entry)] == ["enrolled", "key_added", "key_added"]
    key = SigningPrivateKey.generate().public_key()
    old_sign = entry.signing_keys[0]
    rotated = replace(
        entry,
        serial=2,
        signing_keys=(
            replace(old_sign, not_after=T0),
            KeyRecord(key.alg, key.raw, T0, T0 + 10 * DAY),
        ),
    )
    kinds = sorted(c.kind for c in diff_entries(entry, rotated))
    assert kinds == ["key_added", "key_retired"]
    revoked = replace(
        rotated,
        serial=3,
        signing_keys=(
            replace(rotated.signing_keys[1], revoked_at=T0 + DAY),
            rotated.signing_keys[0],
        ),
    )
    assert [c.kind for c in diff_entries(rotated, revoked)] == ["key_revoked"]
    merged = replace(revoked, serial=4, successor=XA.code, valid_until=T0 + 5 * DAY)
    assert [c.kind for c in diff_entries(revoked, merged)] == ["merged"]
    renamed = replace(merged, serial=5, name="Văn phòng Tỉnh ủy (mới)")
    [change] = diff_entries(merged, renamed)
    assert (change.kind, change.detail) == ("updated", "name changed")
    own = {old_sign.kid, entry.encryption_keys[0].kid}
    assert [rec.kid for _, rec in foreign_keys(rotated, own)] == [rotated.signing_keys[1].kid]
