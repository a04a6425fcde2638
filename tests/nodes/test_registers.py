"""Register numbering: per document type, per calendar year or per committee term."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pytest

from nodes import registers
from nodes.errors import NodeError
from nodes.registers import Numbering
from nodes.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "node.sqlite3")
    yield s
    s.close()


def pid(n: int) -> str:
    return f"01990000-0000-7000-8000-{n:012d}"


def out(
    store: Store, numbering: Numbering, day: date, doc_type: str, n: int, number: int | None = None
) -> int:
    return store.allocate_number(
        "out",
        numbering.period(day),
        doc_type,
        pid(n),
        year=day.year,
        day=day.isoformat(),
        number=number,
    )


def test_periods() -> None:
    yearly = Numbering("year")
    assert yearly.period(date(2025, 12, 31)) == "2025"
    assert yearly.period(date(2026, 1, 1)) == "2026"
    term = Numbering("term", term_start=2025, term_years=5)
    assert term.period(date(2025, 1, 1)) == "2025-2030"
    assert term.period(date(2029, 12, 31)) == "2025-2030"
    assert term.period(date(2030, 1, 1)) == "2030-2035"
    assert term.period(date(2024, 6, 1)) == "2020-2025"
    with pytest.raises(NodeError):
        Numbering("month").period(date(2025, 1, 1))


def test_outgoing_numbers_run_per_type_and_restart_each_year(store: Store) -> None:
    yearly = Numbering("year")
    d1, d2 = date(2025, 12, 30), date(2026, 1, 2)
    assert [out(store, yearly, d1, "CV", 1), out(store, yearly, d1, "CV", 2)] == [1, 2]
    assert out(store, yearly, d1, "NQ", 3) == 1  # another type, its own sequence
    assert out(store, yearly, d2, "CV", 4) == 1  # a new year starts over
    assert out(store, yearly, d1, "CV", 2) == 2  # the same packet keeps its number


def test_outgoing_numbers_run_through_a_committee_term(store: Store) -> None:
    term = Numbering("term", term_start=2025, term_years=5)
    assert out(store, term, date(2025, 12, 30), "NQ", 1) == 1
    assert out(store, term, date(2026, 1, 2), "NQ", 2) == 2  # same term, next number
    assert out(store, term, date(2030, 1, 2), "NQ", 3) == 1  # next term


def test_a_given_number_must_be_free(store: Store) -> None:
    yearly = Numbering("year")
    day = date(2025, 3, 1)
    assert out(store, yearly, day, "CV", 1, number=7) == 7
    assert out(store, yearly, day, "CV", 2) == 8
    with pytest.raises(NodeError) as err:
        out(store, yearly, day, "CV", 3, number=7)
    assert err.value.code == "register_number_taken"
    store.release_number("out", pid(2))
    assert out(store, yearly, day, "CV", 4) == 8


def test_incoming_numbers_are_one_sequence_per_year(store: Store) -> None:
    def incoming(day: date, n: int) -> int:
        return store.allocate_number(
            "in", registers.incoming_period(day), "", pid(n), year=day.year, day=day.isoformat()
        )

    assert [incoming(date(2025, 5, 1), i) for i in range(3)] == [1, 2, 3]
    assert incoming(date(2026, 1, 1), 10) == 1


def test_notation_and_reference() -> None:
    assert registers.default_notation("NQ", "TU") == "NQ/TU"
    assert registers.default_notation("CV", "") == "CV"
    assert registers.format_number(5) == "05"
    assert registers.format_number(125) == "125"
    assert registers.reference("05", "NQ/TU") == "05-NQ/TU"
    assert registers.type_name("KH") == "Kế hoạch"


def test_vietnam_dates() -> None:
    # 31 Dec 2025 17:30 UTC is already 1 January 2026 in Hà Nội.
    assert registers.vn_date(1767202200) == date(2026, 1, 1)


def test_csv_export_columns() -> None:
    text = registers.to_csv(
        "in",
        [
            {
                "number": 1,
                "received_at": 1_760_000_000,
                "sender_name": "Văn phòng Tỉnh ủy",
                "doc_number": "05",
                "notation": "NQ/TU",
                "issued": "2025-09-30",
                "doc_type": "NQ",
                "subject": "về công tác văn phòng",
                "due": "2025-10-15",
                "note": "x",
            }
        ],
        bom=False,
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["Ngày đến", "Số đến", "Nơi gửi"]
    assert rows[1][1:4] == ["1", "Văn phòng Tỉnh ủy", "05-NQ/TU"]
    assert rows[1][5] == "Nghị quyết về công tác văn phòng"
    assert rows[1][7] == "15/10/2025"
    out_text = registers.to_csv(
        "out",
        [
            {
                "doc_number": "01",
                "notation": "KH/TU",
                "day": "2025-10-01",
                "subject": "Kế hoạch",
                "recipient_names": ["Xã Yên Lạc", "Phường Tam Hồng"],
                "accepted_at": 1_760_000_000,
            }
        ],
    )
    assert out_text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(out_text[1:])))
    assert rows[1][0] == "01-KH/TU"
    assert rows[1][4] == "Xã Yên Lạc; Phường Tam Hồng"
    assert rows[1][7] == "2"
    with pytest.raises(NodeError):
        registers.to_csv("both", [])
