"""Registers (sổ văn bản đi / sổ văn bản đến): numbering rules and the CSV export.

Numbering, as offices practise it (DOMAIN.md):

* **outgoing** numbers run per document type, per calendar year (state practice, restart
  every 1 January) or per committee term (Party practice: ``05-NQ/TU`` is the fifth
  resolution of the term), as the office configures;
* **incoming** numbers (số đến) are one sequence for all types that restarts at 1 every
  calendar year.

Numbers are allocated inside the local store's write transaction
(:meth:`nodes.store.Store.allocate_number`), so two clerks' commands at once can never
get the same number.  Dates are Vietnam dates (UTC+7): a document registered at 23:30 on
31 December in Hà Nội belongs to that year.

The export maps register entries to :mod:`nodes.registers_export` rows, which write the
columns of DOMAIN.md in Vietnamese, one row per entry.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from protocol.policy import VN_TZ

from .doctypes import type_name as type_name  # re-exported
from .errors import NodeError
from .registers_export import IncomingRow, OutgoingRow, export_register


def vn_date(ts: int | None = None) -> date:
    """The Vietnam calendar date of a Unix time (now by default)."""
    when = datetime.now(VN_TZ) if ts is None else datetime.fromtimestamp(ts, VN_TZ)
    return when.date()


@dataclass(frozen=True, slots=True)
class Numbering:
    """How outgoing numbers are grouped: per ``year`` or per committee ``term``."""

    mode: str = "year"
    term_start: int = 2025
    term_years: int = 5

    def period(self, day: date) -> str:
        """The register period of ``day``: ``"2025"``, or ``"2025-2030"`` for a term."""
        if self.mode == "year":
            return str(day.year)
        if self.mode != "term":
            raise NodeError("config_invalid", f"numbering {self.mode!r}")
        k = (day.year - self.term_start) // self.term_years
        start = self.term_start + k * self.term_years
        return f"{start}-{start + self.term_years}"


def incoming_period(day: date) -> str:
    """Incoming numbers restart every calendar year, whatever the outgoing rule."""
    return str(day.year)


def format_number(number: int) -> str:
    """Party practice writes numbers below ten with a leading zero: ``05``."""
    return f"{number:02d}"


def default_notation(doc_type: str, abbrev: str) -> str:
    """``NQ/TU`` from the type and the issuing body's abbreviation (or just the type)."""
    return f"{doc_type}/{abbrev}" if abbrev else doc_type


def reference(number: str | None, notation: str | None) -> str:
    """Số và ký hiệu as printed: ``05-NQ/TU``."""
    if number and notation:
        return f"{number}-{notation}"
    return number or notation or ""


def _vn_day(ts: Any) -> date | None:
    return vn_date(int(ts)) if ts else None


def _iso_date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def incoming_rows(entries: Iterable[Mapping[str, Any]]) -> list[IncomingRow]:
    """Rows of the incoming register from the store's entries (see the CLI's export)."""
    return [
        IncomingRow(
            received=_vn_day(e.get("registered_at") or e.get("received_at")) or date.today(),
            number=int(e["number"]),
            sender=str(e.get("sender_name") or e.get("sender") or ""),
            original_reference=reference(e.get("doc_number"), e.get("notation")) or None,
            issued=_iso_date(e.get("issued")),
            subject=str(e.get("subject") or ""),
            type_name=type_name(e.get("doc_type")) or None,
            recipient=e.get("assignee") or None,
            due=_iso_date(e.get("due")),
            notes=e.get("note") or None,
        )
        for e in entries
    ]


def outgoing_rows(entries: Iterable[Mapping[str, Any]]) -> list[OutgoingRow]:
    rows = []
    for e in entries:
        recipients: Sequence[str] = e.get("recipient_names") or []
        rows.append(
            OutgoingRow(
                reference=reference(e.get("doc_number"), e.get("notation")),
                issued=_iso_date(e.get("issued")) or date.fromisoformat(str(e["day"])),
                subject=str(e.get("subject") or ""),
                type_name=type_name(e.get("doc_type")) or None,
                signer=e.get("signer") or None,
                recipients=tuple(recipients),
                drafting_unit=e.get("drafter") or None,
                archive_holder=e.get("archive_holder") or None,
                copies=len(recipients),
                sent=_vn_day(e.get("accepted_at")),
                notes=e.get("note") or None,
            )
        )
    return rows


def to_csv(kind: str, entries: Iterable[Mapping[str, Any]], *, bom: bool = True) -> str:
    """The register of ``kind`` (``in`` or ``out``) as CSV text with its header row.

    Formatting (column headers, dates, BOM, formula-injection guard) is
    :mod:`nodes.registers_export`'s; this only maps the store's entries to its rows.
    """
    out = io.StringIO(newline="")
    if kind == "in":
        export_register("in", incoming_rows(entries), out, bom=bom)
    elif kind == "out":
        export_register("out", outgoing_rows(entries), out, bom=bom)
    else:
        raise NodeError("register_kind_invalid", "the register kind is 'in' or 'out'")
    return out.getvalue()
