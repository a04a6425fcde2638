"""What a clerk asks the node to send: from the command line or a watch folder's send.json.

:class:`SendRequest` is the one shape both produce; :func:`from_send_json` reads the
watch folder's small metadata file::

    {
      "to": ["000.00.12.H41", "000.00.13.H41"],   // or "000.00.12.H41,000.00.13.H41"
      "to_children": "000.00.00.H41",               // optional, also a list
      "to_descendants": "000.00.00.H41",            // optional, also a list
      "subject": "Báo cáo quý III",
      "type": "BC", "number": 12, "notation": "BC/ĐU",
      "signer": "T/M Đảng ủy, Bí thư Nguyễn Văn A",
      "urgency": "khan", "secrecy": "none", "due": "2025-10-15",
      "in_reply_to": "0190c6f2-...", "files": ["Báo cáo quý III.pdf"]  // default: all
    }
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from protocol.codec import nfc
from protocol.errors import LocalError
from protocol.policy import Secrecy, Urgency

from .errors import NodeError

SEND_JSON: Final = "send.json"
READY: Final = ".ready"
_TYPE_RE: Final = re.compile(r"[0-9A-Za-zÀ-ỹĐđ]{1,16}")


@dataclass
class SendRequest:
    subject: str
    files: list[Path]
    to: list[str] = field(default_factory=list)
    to_children: list[str] = field(default_factory=list)
    to_descendants: list[str] = field(default_factory=list)
    doc_type: str = "CV"
    number: int | None = None
    notation: str | None = None
    signer: str | None = None
    urgency: int = 0
    secrecy: int = 0
    due: str | None = None
    in_reply_to: str | None = None
    issued: str | None = None
    place: str | None = None
    notes: str | None = None
    source: str = "cli"

    def check(self) -> SendRequest:
        self.subject = nfc(self.subject).strip()
        if not self.subject:
            raise NodeError("request_invalid", "the subject (trích yếu) is required")
        self.doc_type = nfc(self.doc_type).strip()
        if _TYPE_RE.fullmatch(self.doc_type) is None:
            raise NodeError("request_invalid", f"document type {self.doc_type!r}")
        if self.number is not None and not 1 <= self.number <= 10**9:
            raise NodeError("request_invalid", "the number must be a positive integer")
        if self.secrecy >= Secrecy.TOI_MAT:
            # Never through an internet-connected hub, whatever its configuration.
            raise NodeError(
                "secrecy_refused",
                f"{Secrecy(self.secrecy).label} documents go by the cipher agency's channel only",
            )
        if not (self.to or self.to_children or self.to_descendants):
            raise NodeError("recipients_missing", "give --to, --to-children or --to-descendants")
        for value, name in ((self.due, "due date"), (self.issued, "issue date")):
            if value is not None:
                check_date(value, name)
        if self.in_reply_to is not None:
            self.in_reply_to = packet_id_text(self.in_reply_to)
        for name in ("notation", "signer", "place", "notes"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, nfc(value).strip() or None)
        return self


def split_codes(values: Any) -> list[str]:
    """Organ codes from ``a,b`` strings and/or lists of them, in order, without repeats."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    if not isinstance(items, list | tuple):
        raise NodeError("request_invalid", "recipients must be a string or a list of codes")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise NodeError("request_invalid", "recipients must be organ codes")
        for code in item.split(","):
            code = code.strip()
            if code and code not in out:
                out.append(code)
    return out


def check_date(value: str, name: str) -> str:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise NodeError("request_invalid", f"{name} {value!r} must be YYYY-MM-DD") from None
    if len(value) != 10:
        raise NodeError("request_invalid", f"{name} {value!r} must be YYYY-MM-DD")
    return value


def packet_id_text(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise NodeError("request_invalid", f"{value!r} is not a packet id") from None


def urgency(name: str) -> int:
    try:
        return int(Urgency.from_name(name))
    except LocalError as exc:
        raise NodeError("request_invalid", str(exc)) from None


def secrecy(name: str) -> int:
    try:
        return int(Secrecy.from_name(name))
    except LocalError as exc:
        raise NodeError("request_invalid", str(exc)) from None


_FIELDS: Final = {
    "to",
    "to_children",
    "to_descendants",
    "subject",
    "type",
    "number",
    "notation",
    "signer",
    "urgency",
    "secrecy",
    "due",
    "in_reply_to",
    "issued",
    "place",
    "notes",
    "files",
}


def from_send_json(folder: Path, doc: Any) -> SendRequest:
    """A request from a watch folder's send.json (see the module docstring)."""
    if not isinstance(doc, dict):
        raise NodeError("request_invalid", f"{SEND_JSON} must hold an object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise NodeError("request_invalid", f"{SEND_JSON}: unknown field {sorted(unknown)[0]!r}")

    def text(name: str) -> str | None:
        value = doc.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise NodeError("request_invalid", f"{SEND_JSON}: {name} must be text")
        return value

    number = doc.get("number")
    if number is not None:
        if isinstance(number, str) and number.isdigit():
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool):
            raise NodeError("request_invalid", f"{SEND_JSON}: number must be an integer")
    names = doc.get("files")
    if names is None:
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.name not in (SEND_JSON, READY) and not p.name.startswith(".")
        )
    else:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise NodeError("request_invalid", f"{SEND_JSON}: files must be a list of names")
        files = [_inside(folder, n) for n in names]
    return SendRequest(
        subject=text("subject") or "",
        files=files,
        to=split_codes(doc.get("to")),
        to_children=split_codes(doc.get("to_children")),
        to_descendants=split_codes(doc.get("to_descendants")),
        doc_type=text("type") or "CV",
        number=number,
        notation=text("notation"),
        signer=text("signer"),
        urgency=urgency(text("urgency") or "thuong"),
        secrecy=secrecy(text("secrecy") or "none"),
        due=text("due"),
        in_reply_to=text("in_reply_to"),
        issued=text("issued"),
        place=text("place"),
        notes=text("notes"),
        source=f"watch:{folder.name}",
    ).check()


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if path.parent != folder.resolve():
        raise NodeError("request_invalid", f"{SEND_JSON}: {name!r} is not a file of the folder")
    return path


def as_list(values: Sequence[str]) -> list[str]:
    return split_codes(list(values))
