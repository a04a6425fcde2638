"""Tests of nodes.registers_export: the incoming and outgoing registers as CSV."""

from __future__ import annotations

import csv
import io
import unicodedata
from datetime import date, datetime
from pathlib import Path

import pytest

from nodes.registers_export import (
    BOM,
    INCOMING_HEADERS,
    INCOMING_HEADERS_EN,
    OUTGOING_HEADERS,
    OUTGOING_HEADERS_EN,
    IncomingRow,
    OutgoingRow,
    export_register,
    format_date,
    incoming_csv,
    outgoing_csv,
    safe_cell,
    write_incoming,
    write_outgoing,
)
from protocol.errors import LocalError

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"

INCOMING = [
    IncomingRow(
        received=date(2025, 1, 3),
        number=1,
        sender="Văn phòng Tỉnh ủy",
        original_reference="05-NQ/TU",
        issued=date(2024, 12, 30),
        subject="về tăng cường công tác văn phòng cấp ủy",
        type_name="Nghị quyết",
        recipient="Đồng chí Bí thư; Văn phòng Đảng ủy",
        due=date(2025, 1, 15),
        notes="Bản giấy đến sau",
    ),
    IncomingRow(
        received=datetime(2025, 10, 2, 9, 30),
        number=125,
        sender="Đảng ủy xã Yên Lạc",
        original_reference="12-BC/ĐU",
        issued=date(2025, 9, 30),
        subject=SUBJECT,
        type_name="Kế hoạch",
    ),
]

OUTGOING = [
    OutgoingRow(
        reference="125-KH/TU",
        issued=date(2025, 9, 30),
        subject=SUBJECT,
        type_name="Kế hoạch",
        signer="Nguyễn Văn Hùng",
        recipients=("Đảng ủy xã Yên Lạc", "Chi bộ Trường THCS Tam Hồng"),
        drafting_unit="Văn phòng Tỉnh ủy",
        archive_holder="Trần Thị Mai",
        copies=30,
        sent=date(2025, 10, 1),
        notes="Gửi qua Lienthong",
    ),
]


def read_back(text: str) -> list[list[str]]:
    assert text.startswith(BOM)
    return list(csv.reader(io.StringIO(text[1:], newline="")))


def test_incoming_columns_and_values() -> None:
    rows = read_back(incoming_csv(INCOMING))
    assert tuple(rows[0]) == INCOMING_HEADERS
    assert rows[0] == [
        "Ngày đến",
        "Số đến",
        "Nơi gửi",
        "Số ký hiệu gốc",
        "Ngày ban hành",
        "Tên loại và trích yếu",
        "Đơn vị/người nhận",
        "Hạn giải quyết",
        "Ghi chú",
    ]
    assert rows[1] == [
        "03/01/2025",
        "1",
        "Văn phòng Tỉnh ủy",
        "05-NQ/TU",
        "30/12/2024",
        "Nghị quyết về tăng cường công tác văn phòng cấp ủy",
        "Đồng chí Bí thư; Văn phòng Đảng ủy",
        "15/01/2025",
        "Bản giấy đến sau",
    ]
    # The subject already starts with its type name: not repeated.  Empty cells stay empty.
    assert rows[2] == [
        "02/10/2025",
        "125",
        "Đảng ủy xã Yên Lạc",
        "12-BC/ĐU",
        "30/09/2025",
        SUBJECT,
        "",
        "",
        "",
    ]
    assert len(rows) == 3


def test_outgoing_columns_and_values() -> None:
    rows = read_back(outgoing_csv(OUTGOING))
    assert tuple(rows[0]) == OUTGOING_HEADERS
    assert rows[0] == [
        "Số ký hiệu",
        "Ngày ban hành",
        "Tên loại và trích yếu",
        "Người ký",
        "Nơi nhận",
        "Đơn vị soạn thảo",
        "Người nhận bản lưu",
        "Số lượng bản",
        "Ngày chuyển",
        "Ghi chú",
    ]
    assert rows[1] == [
        "125-KH/TU",
        "30/09/2025",
        SUBJECT,
        "Nguyễn Văn Hùng",
        "Đảng ủy xã Yên Lạc; Chi bộ Trường THCS Tam Hồng",
        "Văn phòng Tỉnh ủy",
        "Trần Thị Mai",
        "30",
        "01/10/2025",
        "Gửi qua Lienthong",
    ]


def test_english_headers() -> None:
    assert tuple(read_back(incoming_csv(INCOMING, english_headers=True))[0]) == (
        INCOMING_HEADERS_EN
    )
    assert tuple(read_back(outgoing_csv(OUTGOING, english_headers=True))[0]) == (
        OUTGOING_HEADERS_EN
    )
    assert len(INCOMING_HEADERS_EN) == len(INCOMING_HEADERS)
    assert len(OUTGOING_HEADERS_EN) == len(OUTGOING_HEADERS)


def test_file_is_utf8_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "so-van-ban-den-2025.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        assert write_incoming(INCOMING, fh) == 2
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.count(b"\r\n") == 3
    assert b"\n" not in raw.replace(b"\r\n", b"")
    # Excel and Python's utf-8-sig read the BOM as a marker, not as text.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        assert next(csv.reader(fh))[0] == "Ngày đến"


def test_no_bom_on_request() -> None:
    buf = io.StringIO()
    write_outgoing(OUTGOING, buf, bom=False)
    assert buf.getvalue().startswith("Số ký hiệu,")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("http://x","Bấm vào")', '\'=HYPERLINK("http://x","Bấm vào")'),
        ("+84 912 000 111", "'+84 912 000 111"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("  =1+1", "'  =1+1"),
        ("\uff1d1+1", "'\uff1d1+1"),
        ("Báo cáo = kết quả", "Báo cáo = kết quả"),
        ("05-NQ/TU", "05-NQ/TU"),
        ("", ""),
        (None, ""),
        (125, "125"),
    ],
)
def test_safe_cell(value: object, expected: str) -> None:
    assert safe_cell(value) == expected


def test_injection_in_every_column_is_neutralised() -> None:
    evil = '=cmd|" /C calc"!A0'
    row = OutgoingRow(
        reference=evil,
        issued=date(2025, 1, 1),
        subject="@" + SUBJECT,
        signer="+Nguyễn",
        recipients=("-Đảng ủy xã Yên Lạc", "Chi bộ"),
        drafting_unit=evil,
        archive_holder=evil,
        notes=evil,
    )
    cells = read_back(outgoing_csv([row]))[1]
    for cell in cells:
        assert not cell or cell[0] not in "=+-@", cell
    assert cells[0] == "'" + evil
    assert cells[2] == "'@" + SUBJECT
    assert cells[4] == "'-Đảng ủy xã Yên Lạc; Chi bộ"


def test_commas_quotes_and_newlines_survive() -> None:
    row = IncomingRow(
        received=date(2025, 3, 8),
        number="12a",
        sender='Ban Tuyên giáo, Ban Dân vận "liên tịch"',
        subject="Dòng một\nDòng hai, có dấu phẩy",
        notes='Ghi chú "quan trọng"',
    )
    text = incoming_csv([row])
    assert read_back(text)[1] == [
        "08/03/2025",
        "12a",
        'Ban Tuyên giáo, Ban Dân vận "liên tịch"',
        "",
        "",
        "Dòng một\nDòng hai, có dấu phẩy",
        "",
        "",
        'Ghi chú "quan trọng"',
    ]


def test_nfd_text_is_written_nfc() -> None:
    row = IncomingRow(
        received=date(2025, 1, 1),
        number=7,
        sender=unicodedata.normalize("NFD", "Chi bộ Trường THCS Tam Hồng"),
        subject=unicodedata.normalize("NFD", SUBJECT),
    )
    text = incoming_csv([row])
    assert unicodedata.is_normalized("NFC", text)
    assert "Chi bộ Trường THCS Tam Hồng" in text


def test_format_date() -> None:
    assert format_date(date(2025, 9, 2)) == "02/09/2025"
    assert format_date(datetime(2025, 12, 31, 23, 59)) == "31/12/2025"
    assert format_date(None) == ""


def test_export_register_dispatch() -> None:
    buf = io.StringIO()
    assert export_register("in", INCOMING, buf) == 2
    assert buf.getvalue() == incoming_csv(INCOMING)
    buf = io.StringIO()
    assert export_register("out", OUTGOING, buf, english_headers=True) == 1
    assert buf.getvalue() == outgoing_csv(OUTGOING, english_headers=True)
    with pytest.raises(LocalError, match="kind"):
        export_register("both", INCOMING, io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(LocalError, match="IncomingRow"):
        export_register("in", OUTGOING, io.StringIO())


def test_empty_register_has_headers_only() -> None:
    assert incoming_csv([]) == BOM + ",".join(INCOMING_HEADERS) + "\r\n"
