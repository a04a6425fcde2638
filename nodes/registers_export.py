"""CSV export of the office's registers: sổ văn bản đến (incoming) and sổ văn bản đi (outgoing).

The node's store produces plain rows (:class:`IncomingRow`, :class:`OutgoingRow`); this
module only formats them:

* UTF-8 with a byte order mark.  Excel on Windows opens a CSV file in the ANSI code page
  (Windows-1258 or 1252) unless the file starts with a UTF-8 BOM; without it every
  Vietnamese letter with a diacritic turns into mojibake (``Ká»¹`` for ``Kỹ``).  LibreOffice
  and Python's ``utf-8-sig`` read the BOM as a marker and drop it.
* The Vietnamese column headers of the registers, in their order (``english_headers=True``
  for English ones); dates as dd/mm/yyyy; CRLF line ends (RFC 4180, what Excel writes).
* Safe against CSV (formula) injection: a cell that begins -- after any leading spaces --
  with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return, or the full-width forms of
  the four) would be run as a formula by Excel or LibreOffice, so it is prefixed with a
  single quote, which makes the spreadsheet show it as text.  Subjects and sender names
  come from other offices, so they are untrusted.

Write to a text stream opened with ``encoding="utf-8", newline=""`` (not ``utf-8-sig``:
the BOM is written here).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal, TextIO, TypeVar

from protocol.codec import nfc
from protocol.errors import LocalError

__all__ = [
    "BOM",
    "INCOMING_HEADERS",
    "INCOMING_HEADERS_EN",
    "OUTGOING_HEADERS",
    "OUTGOING_HEADERS_EN",
    "IncomingRow",
    "OutgoingRow",
    "export_register",
    "format_date",
    "incoming_csv",
    "outgoing_csv",
    "safe_cell",
    "write_incoming",
    "write_outgoing",
]

BOM: Final = "\ufeff"

#: Sổ văn bản đến.
INCOMING_HEADERS: Final = (
    "Ngày đến",
    "Số đến",
    "Nơi gửi",
    "Số ký hiệu gốc",
    "Ngày ban hành",
    "Tên loại và trích yếu",
    "Đơn vị/người nhận",
    "Hạn giải quyết",
    "Ghi chú",
)
INCOMING_HEADERS_EN: Final = (
    "Date received",
    "Incoming number",
    "Sender",
    "Original number and notation",
    "Date issued",
    "Type and subject",
    "Receiving unit/person",
    "Due date",
    "Notes",
)

#: Sổ văn bản đi.
OUTGOING_HEADERS: Final = (
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
)
OUTGOING_HEADERS_EN: Final = (
    "Number and notation",
    "Date issued",
    "Type and subject",
    "Signer",
    "Recipients",
    "Drafting unit",
    "Archive copy holder",
    "Copies",
    "Date sent",
    "Notes",
)

#: First characters a spreadsheet treats as the start of a formula (or a DDE payload).
_FORMULA_START: Final = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_LIST_SEPARATOR: Final = "; "
_Row = TypeVar("_Row", "IncomingRow", "OutgoingRow")


@dataclass(frozen=True, slots=True)
class IncomingRow:
    """One entry of the incoming register (sổ văn bản đến)."""

    received: date
    number: int | str
    sender: str
    original_reference: str | None = None
    issued: date | None = None
    subject: str = ""
    type_name: str | None = None
    recipient: str | None = None
    due: date | None = None
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingRow:
    """One entry of the outgoing register (sổ văn bản đi)."""

    reference: str
    issued: date
    subject: str
    type_name: str | None = None
    signer: str | None = None
    recipients: Sequence[str] = ()
    drafting_unit: str | None = None
    archive_holder: str | None = None
    copies: int | None = None
    sent: date | None = None
    notes: str | None = None


def format_date(value: date | None) -> str:
    """dd/mm/yyyy, as Vietnamese registers write dates; empty for None."""
    return "" if value is None else value.strftime("%d/%m/%Y")


def safe_cell(value: object) -> str:
    """The cell text, NFC, with a leading quote if a spreadsheet would read a formula."""
    if value is None:
        return ""
    text = nfc(str(value))
    stripped = text.lstrip(" ")
    if stripped and stripped[0] in _FORMULA_START:
        return "'" + text
    return text


def _type_and_subject(type_name: str | None, subject: str) -> str:
    """Tên loại và trích yếu: the type name before the subject unless it already starts so."""
    subject = subject.strip()
    if not type_name:
        return subject
    if nfc(subject).casefold().startswith(nfc(type_name).casefold()):
        return subject
    return f"{type_name} {subject}".strip()


def _incoming_cells(row: IncomingRow) -> list[str]:
    return [
        format_date(row.received),
        str(row.number),
        row.sender,
        row.original_reference or "",
        format_date(row.issued),
        _type_and_subject(row.type_name, row.subject),
        row.recipient or "",
        format_date(row.due),
        row.notes or "",
    ]


def _outgoing_cells(row: OutgoingRow) -> list[str]:
    return [
        row.reference,
        format_date(row.issued),
        _type_and_subject(row.type_name, row.subject),
        row.signer or "",
        _LIST_SEPARATOR.join(r.strip() for r in row.recipients if r.strip()),
        row.drafting_unit or "",
        row.archive_holder or "",
        "" if row.copies is None else str(row.copies),
        format_date(row.sent),
        row.notes or "",
    ]


def _write(out: TextIO, headers: Sequence[str], rows: Iterable[list[str]], bom: bool) -> int:
    if bom:
        out.write(BOM)
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(headers)
    count = 0
    for cells in rows:
        writer.writerow([safe_cell(c) for c in cells])
        count += 1
    return count


def write_incoming(
    rows: Iterable[IncomingRow], out: TextIO, *, english_headers: bool = False, bom: bool = True
) -> int:
    """Write the incoming register as CSV to ``out``; returns the number of rows."""
    headers = INCOMING_HEADERS_EN if english_headers else INCOMING_HEADERS
    return _write(out, headers, (_incoming_cells(r) for r in rows), bom)


def write_outgoing(
    rows: Iterable[OutgoingRow], out: TextIO, *, english_headers: bool = False, bom: bool = True
) -> int:
    """Write the outgoing register as CSV to ``out``; returns the number of rows."""
    headers = OUTGOING_HEADERS_EN if english_headers else OUTGOING_HEADERS
    return _write(out, headers, (_outgoing_cells(r) for r in rows), bom)


def export_register(
    kind: Literal["in", "out"],
    rows: Iterable[IncomingRow] | Iterable[OutgoingRow],
    out: TextIO,
    *,
    english_headers: bool = False,
    bom: bool = True,
) -> int:
    """``registers export --kind in|out``: write the rows of either register."""
    if kind == "in":
        return _write(
            out,
            INCOMING_HEADERS_EN if english_headers else INCOMING_HEADERS,
            (_incoming_cells(_expect(r, IncomingRow)) for r in rows),
            bom,
        )
    if kind == "out":
        return _write(
            out,
            OUTGOING_HEADERS_EN if english_headers else OUTGOING_HEADERS,
            (_outgoing_cells(_expect(r, OutgoingRow)) for r in rows),
            bom,
        )
    raise LocalError(f"register kind {kind!r}: use 'in' or 'out'")


def _expect(row: object, cls: type[_Row]) -> _Row:
    if not isinstance(row, cls):
        raise LocalError(f"expected {cls.__name__} rows, got {type(row).__name__}")
    return row


def incoming_csv(rows: Iterable[IncomingRow], *, english_headers: bool = False) -> str:
    """The incoming register as one CSV string (BOM included)."""
    buf = io.StringIO(newline="")
    write_incoming(rows, buf, english_headers=english_headers)
    return buf.getvalue()


def outgoing_csv(rows: Iterable[OutgoingRow], *, english_headers: bool = False) -> str:
    """The outgoing register as one CSV string (BOM included)."""
    buf = io.StringIO(newline="")
    write_outgoing(rows, buf, english_headers=english_headers)
    return buf.getvalue()
