"""The node's local store: schema, directory cache, outbox, receipts, registers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nodes.errors import NodeError
from nodes.store import ACCEPTED, AWAITING_BODY, MIGRATIONS, QUEUED, Store

PID = "01990000-0000-7000-8000-000000000001"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "node.sqlite3")
    yield s
    s.close()


def sent_row(pid: str = PID, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "packet_id": pid,
        "created_at": 1_750_000_000,
        "kind": "document",
        "recipients": '["000.00.12.H41"]',
        "subject": "Kế hoạch tổng kết",
        "doc_type": "KH",
        "urgency": 0,
        "secrecy": 0,
        "files": "[]",
        "archive": "/tmp/a",
        "envelope": b"env",
        "envelope_digest": b"d" * 32,
        "body_path": "/tmp/b",
        "body_size": 10,
        "state": QUEUED,
    }
    row.update(fields)
    return row


def test_schema_is_versioned_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite3"
    Store.open(path).close()
    s = Store.open(path)
    assert s.schema_version == len(MIGRATIONS)
    s.close()
    assert path.stat().st_mode & 0o077 == 0


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite3"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(NodeError) as err:
        Store.open(path)
    assert err.value.code == "store_too_new"


def test_directory_cache_never_goes_back_to_an_older_serial(store: Store) -> None:
    assert store.put_entry("A", 3, b"three", parent=None, name="Tỉnh ủy", role="office")
    assert not store.put_entry("A", 2, b"two", parent=None, name="Tỉnh ủy", role="office")
    cached = store.get_entry("A")
    assert cached is not None
    assert (cached.serial, cached.entry) == (3, b"three")
    assert store.put_entry("B", 1, b"b", parent="A", name="Xã Yên Lạc", role="office")
    assert store.cached_children("A") == ["B"]
    assert store.organ_name("B") == "Xã Yên Lạc"


def test_outbox_due_and_counts(store: Store) -> None:
    store.insert_sent(sent_row())
    store.insert_sent(sent_row("01990000-0000-7000-8000-000000000002", next_attempt=2**40))
    store.insert_sent(sent_row("01990000-0000-7000-8000-000000000003", state=ACCEPTED))
    assert [r["packet_id"] for r in store.outbox_due()] == [PID]
    assert len(store.outbox_due(all_due=True)) == 2
    assert store.outbox_count() == 2
    store.update_sent(PID, state=AWAITING_BODY, attempts=1)
    row = store.get_sent(PID)
    assert row is not None
    assert (row["state"], row["attempts"]) == (AWAITING_BODY, 1)


def test_receipts_are_stored_once(store: Store) -> None:
    record = {
        "digest": b"r" * 32,
        "packet_id": PID,
        "organ": "B",
        "signer": "B",
        "status": "01",
        "at": 1,
        "raw": b"raw",
        "source": "office",
        "direction": "out",
        "state": "queued",
        "details": {"note": "Đã nhận"},
    }
    assert store.add_receipt(record)
    assert not store.add_receipt(record)
    assert [r["status"] for r in store.queued_receipts()] == ["01"]
    store.mark_receipt(b"r" * 32, "posted")
    assert store.queued_receipts() == []
    assert store.has_receipt(b"r" * 32)


def test_resolve_id_by_prefix(store: Store) -> None:
    store.insert_sent(sent_row())
    store.insert_sent(sent_row("01990000-0000-7000-8000-000000000002"))
    assert store.resolve_id(PID) == PID
    assert store.resolve_id("019900000000700080000000000000" + "01") == PID
    with pytest.raises(NodeError) as err:
        store.resolve_id("01990000")
    assert err.value.code == "packet_ambiguous"
    with pytest.raises(NodeError) as err:
        store.resolve_id("ffff")
    assert err.value.code == "packet_not_found"


def test_a_transaction_rolls_back_as_one(store: Store) -> None:
    def fail() -> None:
        with store.transaction():
            store.set_meta("a", b"1")
            store.set_meta("b", b"2")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert store.get_meta("a") is None
    store.set_meta("a", b"1")
    store.set_meta("a", b"2")
    assert store.get_meta("a") == b"2"
