"""edXML (QCVN 102:2016): export to and import from the national exchange format.

Offices already run document systems (hệ thống quản lý văn bản) that speak edXML; these
functions let them hand documents to Lienthong and take received ones back.

The structure follows the public SDK samples of the national exchange axis (the VPCP/VXP
SDK's ``edoc_new.edxml`` as rebuilt by public Vietnamese document-system code) ::

    <edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">
      <edXML:edXMLEnvelope xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">
        <edXML:edXMLHeader>
          <edXML:MessageHeader>
            From, To+, Code, PromulgationInfo, DocumentType, Subject, Content, SignerInfo,
            DueDate, ToPlaces, OtherInfo, ResponseFor*, SteeringType, DocumentId
          </edXML:MessageHeader>
          <edXML:TraceHeaderList>
            <edXML:TraceHeader> OrganId, Timestamp </edXML:TraceHeader>
            <edXML:Bussiness> BussinessDocType, BussinessDocReason, DocumentId, Paper,
                              StaffInfo </edXML:Bussiness>
          </edXML:TraceHeaderList>
          <lt:Lienthong xmlns:lt="urn:lienthong:edxml:1"> ... </lt:Lienthong>
        </edXML:edXMLHeader>
        <edXML:edXMLBody>
          <edXML:edXMLManifest version="1.0">
            <edXML:Reference xlink:href="cid:...">Description, AttachmentName, ContentType,
                                                 ContentId</edXML:Reference>
          </edXML:edXMLManifest>
        </edXML:edXMLBody>
      </edXML:edXMLEnvelope>
      <AttachmentEncoded>
        <Attachment> ContentType, ContentId, Description, ContentTransferEncoded (base64),
                     AttachmentName </Attachment>
      </AttachmentEncoded>
    </edXML>

``Bussiness`` is spelt with two s in the format.  BussinessDocType: 0 new document,
1 recall (thu hồi), 2 update (cập nhật), 3 replace (thay thế).  Priority (độ khẩn): 0 thường,
1 khẩn, 2 thượng khẩn, 3 hỏa tốc, 4 hỏa tốc hẹn giờ.  Dates are written ``yyyy/MM/dd`` and
timestamps ``yyyy/MM/dd HH:mm:ss`` in Vietnam time, as the samples do.

A status packet (trạng thái) carries, in the same envelope, an ``edXML:Status`` with
ResponseFor (OrganId, Code, PromulgationDate, DocumentId), From, StatusCode, Description,
Timestamp and StaffInfo; the codes are ours: 01-06, 13, 15, 16 (:data:`STATUS`).

What the format has no field for -- the Lienthong packet id, reply and target packet ids,
the declared secrecy, the notes, the clear routing reference and each file's SHA-256 --
travels in one element of our own namespace, ``lt:Lienthong``, which other systems ignore.
Without it an import still works: identity then rests on the national ``DocumentId``.

Parsing untrusted XML: ``defusedxml``'s expat reader with DTDs, entity declarations and
external references all forbidden (so no billion laughs, no XXE), a size bound on the
input, bounds on depth, element count and stored text, and attachments streamed from
base64 straight to disk (or only hashed) -- memory stays small whatever the document size.
Every refusal is a :class:`RemoteError`:

* ``field_invalid`` -- not well-formed XML, a DTD or entity, a wrong root, a value that
  does not parse (date, priority, base64, organ code, file name ...), a repeated element;
* ``field_missing`` -- a required element is absent or empty;
* ``size_limit_exceeded`` -- the input exceeds the size bound;
* ``file_digest_mismatch`` -- an attachment differs from the SHA-256 ``lt:Lienthong`` gives;
* ``status_code_unknown`` / ``reason_required`` -- a status packet's code is not ours, or a
  rejection, recall or recall refusal has no description.

Exporting refuses our own misuse (bad metadata, a file that differs from its FileInfo) with
a :class:`LocalError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import re
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Final
from xml.sax import SAXException
from xml.sax.handler import ContentHandler, feature_namespaces
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.expatreader import DefusedExpatParser

from protocol.codec import check_text, nfc
from protocol.directory import check_organ_code
from protocol.errors import LocalError, RemoteError
from protocol.packet import (
    KINDS,
    MAX_FILES,
    MAX_RECIPIENTS,
    DocumentMetadata,
    FileInfo,
    Reference,
    Routing,
    check_file_name,
    check_packet_id,
)
from protocol.policy import VN_TZ
from protocol.receipts import STATUS

from .doctypes import DOC_TYPES

__all__ = [
    "BUSINESS_DOC_TYPES",
    "DEFAULT_TYPE_CODE",
    "DOC_TYPE_NAMES",
    "EDXML_NS",
    "IMPORT_MAX",
    "LT_NS",
    "EdxmlExtras",
    "EdxmlStatus",
    "ImportedDocument",
    "OrganInfo",
    "ResponseFor",
    "StaffInfo",
    "TraceEntry",
    "doc_type_from_name",
    "export_document",
    "export_status",
    "import_document",
    "import_document_from_bytes",
    "import_status",
    "national_document_id",
    "write_document",
]

EDXML_NS: Final = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
#: Our extension namespace: Lienthong identifiers the national format has no field for.
LT_NS: Final = "urn:lienthong:edxml:1"
XLINK_NS: Final = "http://www.w3.org/1999/xlink"
_XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
_XSD_NS: Final = "http://www.w3.org/2001/XMLSchema"

#: Largest edXML document accepted (base64 attachments included).
IMPORT_MAX: Final = 1 << 30
#: Bounds on what the parser keeps in memory besides the streamed attachments.
DEPTH_MAX: Final = 32
NODES_MAX: Final = 50_000
TEXT_MAX: Final = 256 * 1024
TOTAL_TEXT_MAX: Final = 8 * 1024 * 1024
_READ_CHUNK: Final = 256 * 1024
_NAME_BYTES_MAX: Final = 255
#: Bytes of a file base64-encoded at a time on export (a multiple of 3: no padding inside).
_ENCODE_CHUNK: Final = 3 * 256 * 1024

#: BussinessDocType values of the format and the packet kinds they carry.
BUSINESS_DOC_TYPES: Final[dict[str, int]] = {"document": 0, "recall": 1, "update": 2, "replace": 3}
_KIND_OF: Final = {v: k for k, v in BUSINESS_DOC_TYPES.items()}

#: Type abbreviations (ký hiệu loại) and their names (one table with the registers).
DOC_TYPE_NAMES: Final = DOC_TYPES
#: Other names clerks' systems write for the same types.
_TYPE_ALIASES: Final = {"quy dinh": "QĐ", "van ban": "CV"}
#: DocumentType/Type written when the caller gives none: 1, as the public SDK samples write
#: it for administrative documents (văn bản hành chính).
DEFAULT_TYPE_CODE: Final = "1"

_ILLEGAL_XML_CHARS: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NATIONAL_DATE: Final = "%Y/%m/%d"
_NATIONAL_TIMESTAMP: Final = "%Y/%m/%d %H:%M:%S"
_YMD_RE: Final = re.compile(
    r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?)?"
)
_DMY_RE: Final = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{4})(?: (\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?)?"
)
_INT_RE: Final = re.compile(r"[0-9]{1,9}")
_B64_WS: Final = {ord(c): None for c in " \t\r\n"}


# --- data ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrganInfo:
    """An organ as edXML names it (From, To): the national organ id and its contact data."""

    organ_id: str
    name: str | None = None
    in_charge: str | None = None
    address: str | None = None
    email: str | None = None
    telephone: str | None = None
    fax: str | None = None
    website: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseFor:
    """The document a reply or status answers: organ, số/ký hiệu, date, national id."""

    organ_id: str
    code: str | None = None
    promulgation_date: str | None = None
    document_id: str | None = None


@dataclass(frozen=True, slots=True)
class StaffInfo:
    """The clerk or handler behind a business operation or a status."""

    department: str | None = None
    staff: str | None = None
    mobile: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One hop of the TraceHeaderList: organ and Unix time."""

    organ_id: str
    at: int


@dataclass(frozen=True, slots=True)
class EdxmlExtras:
    """edXML fields Lienthong's own metadata has no place for; kept so nothing is lost.

    On export a field left ``None`` is omitted, except ``document_id`` (computed by
    :func:`national_document_id`), ``type_code`` (:data:`DEFAULT_TYPE_CODE`) and
    ``type_name`` (from :data:`DOC_TYPE_NAMES`).
    """

    document_id: str | None = None
    type_code: str | None = None
    type_detail: str | None = None
    type_name: str | None = None
    content: str | None = None
    competence: str | None = None
    position: str | None = None
    to_places: tuple[str, ...] = ()
    sphere: str | None = None
    typer_notation: str | None = None
    promulgation_amount: int | None = None
    page_amount: int | None = None
    appendixes: tuple[str, ...] = ()
    response_for: tuple[ResponseFor, ...] = ()
    steering_type: int | None = None
    business_reason: str | None = None
    business_document_id: str | None = None
    paper: int | None = None
    staff: StaffInfo | None = None


@dataclass(frozen=True, slots=True)
class ImportedDocument:
    """A document read from edXML.

    ``metadata.files`` lists each attachment's NFC name, media type, size and SHA-256 in
    order; ``files`` the paths they were written to (empty when no folder was given).
    ``packet_id`` and the routing's ``in_reply_to``/``target`` come from ``lt:Lienthong``
    and are ``None`` for documents from other systems: a recall or update from one names its
    target only by national id, in ``extras.business_document_id``.
    """

    metadata: DocumentMetadata
    routing: Routing
    kind: str
    sender: OrganInfo
    recipients: tuple[OrganInfo, ...]
    extras: EdxmlExtras
    packet_id: bytes | None
    trace: tuple[TraceEntry, ...]
    files: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class EdxmlStatus:
    """A status packet: ``status`` is one of our codes (01-06, 13, 15, 16)."""

    status: str
    response_for: ResponseFor
    sender: OrganInfo
    at: int
    description: str | None = None
    staff: StaffInfo | None = None
    packet_id: bytes | None = None

    @property
    def label(self) -> str:
        """The status's Vietnamese label (``đã tiếp nhận`` ...)."""
        return STATUS[self.status].vi


# --- small helpers -----------------------------------------------------------------------


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def _type_key(text: str) -> str:
    return " ".join(_strip_marks(text).casefold().split())


_TYPE_BY_NAME: Final = {
    **{_type_key(name): abbr for abbr, name in DOC_TYPE_NAMES.items()},
    **_TYPE_ALIASES,
}
_TYPE_BY_ABBR: Final = {_type_key(abbr): abbr for abbr in DOC_TYPE_NAMES}


def doc_type_from_name(type_name: str | None, notation: str | None = None) -> str:
    """Our type abbreviation for an edXML TypeName, with or without diacritics.

    Falls back to a known abbreviation written as the name, then to the first part of the
    notation (``NQ/TU`` → NQ, ``QĐ-UBND`` → QĐ), then to CV (công văn).
    """
    if type_name:
        key = _type_key(type_name)
        found = _TYPE_BY_NAME.get(key) or _TYPE_BY_ABBR.get(key)
        if found:
            return found
    if notation:
        head = re.split(r"[/-]", notation, maxsplit=1)[0]
        found = _TYPE_BY_ABBR.get(_type_key(head))
        if found:
            return found
    return "CV"


def _iso_to_national(value: str) -> str:
    return value.replace("-", "/")


def national_document_id(
    organ_id: str, issued: str | None, number: str | None, notation: str | None
) -> str | None:
    """The national document id: ``organ,yyyy/MM/dd,number/notation`` (None if unknown)."""
    code = "/".join(p for p in (number, notation) if p)
    if not issued or not code:
        return None
    return f"{organ_id},{_iso_to_national(issued)},{code}"


def _uuid_text(value: bytes) -> str:
    return str(uuid.UUID(bytes=value))


# --- export ------------------------------------------------------------------------------


def _xml_legal(value: str) -> str:
    value = nfc(value)
    if _ILLEGAL_XML_CHARS.search(value):
        raise LocalError("text holds a character XML 1.0 cannot carry")
    return value


def _xml_text(value: str) -> str:
    return escape(_xml_legal(value))


def _xml_attr(value: str) -> str:
    return quoteattr(_xml_legal(value))


class _Writer:
    """Collects XML pieces; ``edXML:``-prefixed unless told otherwise."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def open(self, tag: str, attrs: str = "") -> None:
        self.parts.append(f"<edXML:{tag}{attrs}>")

    def close(self, tag: str) -> None:
        self.parts.append(f"</edXML:{tag}>")

    def leaf(self, tag: str, value: str | int | None, *, always: bool = False) -> None:
        if value is None or value == "":
            if always:
                self.parts.append(f"<edXML:{tag}/>")
            return
        self.parts.append(f"<edXML:{tag}>{_xml_text(str(value))}</edXML:{tag}>")

    def organ(self, tag: str, organ: OrganInfo) -> None:
        self.open(tag)
        self.leaf("OrganId", organ.organ_id)
        self.leaf("OrganizationInCharge", organ.in_charge, always=True)
        self.leaf("OrganName", organ.name, always=True)
        self.leaf("OrganAdd", organ.address, always=True)
        self.leaf("Email", organ.email, always=True)
        self.leaf("Telephone", organ.telephone, always=True)
        self.leaf("Fax", organ.fax, always=True)
        self.leaf("Website", organ.website, always=True)
        self.close(tag)

    def response_for(self, rf: ResponseFor) -> None:
        self.open("ResponseFor")
        self.leaf("OrganId", rf.organ_id)
        self.leaf("Code", rf.code, always=True)
        date_ = _iso_to_national(rf.promulgation_date) if rf.promulgation_date else None
        self.leaf("PromulgationDate", date_, always=True)
        self.leaf("DocumentId", rf.document_id, always=True)
        self.close("ResponseFor")

    def staff(self, staff: StaffInfo) -> None:
        self.open("StaffInfo")
        self.leaf("Department", staff.department, always=True)
        self.leaf("Staff", staff.staff, always=True)
        self.leaf("Mobile", staff.mobile, always=True)
        self.leaf("Email", staff.email, always=True)
        self.close("StaffInfo")

    def encoded(self) -> bytes:
        return "".join(self.parts).encode()


def _local(check: Callable[[], object]) -> None:
    """Run a protocol check on our own data: its RemoteError is our fault here."""
    try:
        check()
    except RemoteError as exc:
        raise LocalError(str(exc)) from None


def _timestamp(at: int) -> str:
    return datetime.fromtimestamp(at, VN_TZ).strftime(_NATIONAL_TIMESTAMP)


def _check_organ(organ: OrganInfo) -> None:
    _local(lambda: check_organ_code(organ.organ_id))


def _open_root(w: _Writer) -> None:
    w.raw('<?xml version="1.0" encoding="UTF-8"?>\n')
    w.raw(
        f"<edXML xmlns:xsi={quoteattr(_XSI_NS)} xmlns:xsd={quoteattr(_XSD_NS)} "
        f"xmlns={quoteattr(EDXML_NS)}>"
    )
    w.open("edXMLEnvelope", f" xmlns:edXML={quoteattr(EDXML_NS)}")
    w.open("edXMLHeader")


def write_document(
    out: IO[bytes],
    meta: DocumentMetadata,
    routing: Routing,
    sender: OrganInfo,
    recipients: Sequence[OrganInfo],
    files: Sequence[tuple[FileInfo, Path | bytes]],
    packet_id: bytes | None = None,
    kind: str = "document",
    *,
    extras: EdxmlExtras | None = None,
    created_at: int | None = None,
    allow_classified: bool = False,
) -> None:
    """Write one document as edXML to ``out``, streaming each file from disk in chunks.

    ``files`` pairs each file's :class:`FileInfo` (name, media type, size, SHA-256) with
    its bytes or its path.  A file whose bytes differ from its FileInfo raises a
    :class:`LocalError` once read -- discard what was written then.

    Classified documents (``routing.secrecy`` > 0) are refused unless ``allow_classified``:
    edXML is the format of the ordinary-network exchange axis.
    """
    ex = extras or EdxmlExtras()
    if kind not in KINDS:
        raise LocalError(f"kind {kind!r}")
    meta = replace(meta.normalised(), files=())
    _local(lambda: DocumentMetadata.from_cbor(meta.to_cbor()))
    _local(lambda: routing.check(kind))
    _local(lambda: Routing.from_cbor(routing.to_cbor()))
    if routing.secrecy and not allow_classified:
        raise LocalError(
            "classified documents are not exported to edXML (allow_classified=True to override)"
        )
    if packet_id is not None:
        _local(lambda: check_packet_id(packet_id))
    _check_organ(sender)
    if not recipients or len(recipients) > MAX_RECIPIENTS:
        raise LocalError(f"a document has 1 to {MAX_RECIPIENTS} recipients")
    for r in recipients:
        _check_organ(r)
    if len({r.organ_id for r in recipients}) != len(recipients):
        raise LocalError("a recipient organ is named twice")
    if len(files) > MAX_FILES:
        raise LocalError(f"a document holds at most {MAX_FILES} files")
    names: set[str] = set()
    for info, _data in files:
        name = nfc(info.name)
        try:
            check_file_name(name)
            check_text(info.media_type, name="media type", max_len=127)
        except RemoteError as exc:
            raise LocalError(str(exc)) from None
        if name.casefold() in names:
            raise LocalError(f"file name {name!r} appears twice")
        names.add(name.casefold())
    created = int(time.time()) if created_at is None else created_at
    token = packet_id.hex() if packet_id is not None else secrets.token_hex(16)
    cids = [f"{i + 1:03d}.{token}@lienthong" for i in range(len(files))]

    w = _Writer()
    _open_root(w)
    w.open("MessageHeader")
    w.organ("From", sender)
    for r in recipients:
        w.organ("To", r)
    if meta.number or meta.notation:
        w.open("Code")
        w.leaf("CodeNumber", meta.number, always=True)
        w.leaf("CodeNotation", meta.notation, always=True)
        w.close("Code")
    w.open("PromulgationInfo")
    w.leaf("Place", meta.place, always=True)
    w.leaf("PromulgationDate", _iso_to_national(meta.issued) if meta.issued else None, always=True)
    w.close("PromulgationInfo")
    w.open("DocumentType")
    w.leaf("Type", ex.type_code or DEFAULT_TYPE_CODE)
    w.leaf("TypeDetail", ex.type_detail)
    w.leaf("TypeName", ex.type_name or DOC_TYPE_NAMES.get(meta.doc_type, meta.doc_type))
    w.close("DocumentType")
    w.leaf("Subject", meta.subject)
    w.leaf("Content", ex.content)
    if meta.signer or ex.competence or ex.position:
        w.open("SignerInfo")
        w.leaf("Competence", ex.competence, always=True)
        w.leaf("Position", ex.position, always=True)
        w.leaf("FullName", meta.signer, always=True)
        w.close("SignerInfo")
    w.leaf("DueDate", _iso_to_national(routing.due) if routing.due else None)
    if ex.to_places:
        w.open("ToPlaces")
        for place in ex.to_places:
            w.leaf("Place", place, always=True)
        w.close("ToPlaces")
    w.open("OtherInfo")
    w.leaf("Priority", routing.urgency)
    w.leaf("SphereOfPromulgation", ex.sphere)
    w.leaf("TyperNotation", ex.typer_notation)
    w.leaf("PromulgationAmount", ex.promulgation_amount)
    w.leaf("PageAmount", ex.page_amount)
    if ex.appendixes:
        w.open("Appendixes")
        for appendix in ex.appendixes:
            w.leaf("Appendix", appendix, always=True)
        w.close("Appendixes")
    w.close("OtherInfo")
    for rf in ex.response_for:
        _check_organ(OrganInfo(rf.organ_id))
        w.response_for(rf)
    w.leaf("SteeringType", ex.steering_type)
    document_id = ex.document_id or national_document_id(
        sender.organ_id, meta.issued, meta.number, meta.notation
    )
    if document_id is None and packet_id is not None:
        document_id = f"{sender.organ_id},{_timestamp(created)[:10]},{_uuid_text(packet_id)}"
    w.leaf("DocumentId", document_id)
    w.close("MessageHeader")

    w.raw(
        f'<edXML:TraceHeaderList id={quoteattr("lt" + token[:16])} version="1.0">'
        "<edXML:TraceHeader>"
    )
    w.leaf("OrganId", sender.organ_id)
    w.leaf("Timestamp", _timestamp(created))
    w.close("TraceHeader")
    w.open("Bussiness")
    w.leaf("BussinessDocType", BUSINESS_DOC_TYPES[kind])
    w.leaf("BussinessDocReason", ex.business_reason)
    w.leaf("DocumentId", ex.business_document_id)
    w.leaf("Paper", ex.paper)
    if ex.staff is not None:
        w.staff(ex.staff)
    w.close("Bussiness")
    w.close("TraceHeaderList")

    w.raw(f'<lt:Lienthong xmlns:lt={quoteattr(LT_NS)} version="1">')
    if packet_id is not None:
        w.raw(f"<lt:PacketId>{_uuid_text(packet_id)}</lt:PacketId>")
    if routing.in_reply_to is not None:
        w.raw(f"<lt:InReplyTo>{_uuid_text(routing.in_reply_to)}</lt:InReplyTo>")
    if routing.target is not None:
        w.raw(f"<lt:Target>{_uuid_text(routing.target)}</lt:Target>")
    w.raw(f"<lt:Secrecy>{routing.secrecy}</lt:Secrecy>")
    if routing.reference is not None:
        ref = routing.reference
        attrs = "".join(
            f" {k}={_xml_attr(v)}"
            for k, v in (
                ("type", ref.doc_type),
                ("number", ref.number),
                ("notation", ref.notation),
                ("date", ref.date),
            )
            if v is not None
        )
        w.raw(f"<lt:Reference{attrs}/>")
    if meta.notes is not None:
        w.raw(f"<lt:Notes>{_xml_text(meta.notes)}</lt:Notes>")
    for cid, (info, _data) in zip(cids, files, strict=True):
        w.raw(f"<lt:File cid={quoteattr(cid)} sha256={quoteattr(info.sha256.hex())}/>")
    w.raw("</lt:Lienthong>")
    w.close("edXMLHeader")

    w.open("edXMLBody")
    w.open("edXMLManifest", ' version="1.0"')
    for i, (cid, (info, _data)) in enumerate(zip(cids, files, strict=True)):
        w.raw(
            f"<edXML:Reference xmlns:xlink={quoteattr(XLINK_NS)} "
            f'xlink:href={quoteattr("cid:" + cid)} xlink:type="simple">'
        )
        w.leaf("Description", f"Tệp đính kèm {i + 1}")
        w.leaf("AttachmentName", nfc(info.name))
        w.leaf("ContentType", info.media_type)
        w.leaf("ContentId", f"cid:{cid}")
        w.close("Reference")
    w.close("edXMLManifest")
    w.close("edXMLBody")
    w.close("edXMLEnvelope")
    if files:
        w.raw("<AttachmentEncoded>")
    out.write(w.encoded())

    for i, (cid, (info, data)) in enumerate(zip(cids, files, strict=True)):
        out.write(
            (
                f"<Attachment><ContentType>{_xml_text(info.media_type)}</ContentType>"
                f"<ContentId>{_xml_text(cid)}</ContentId>"
                f"<Description>Tệp đính kèm {i + 1}</Description>"
                "<ContentTransferEncoded>"
            ).encode()
        )
        _write_base64(out, info, data)
        out.write(
            (
                "</ContentTransferEncoded>"
                f"<AttachmentName>{_xml_text(info.name)}</AttachmentName></Attachment>"
            ).encode()
        )
    out.write(b"</AttachmentEncoded></edXML>\n" if files else b"</edXML>\n")


def _chunks(data: Path | bytes) -> Iterator[bytes | memoryview]:
    if isinstance(data, Path):
        with data.open("rb") as fh:
            while chunk := fh.read(_ENCODE_CHUNK):
                yield chunk
        return
    with memoryview(data) as mv:
        for pos in range(0, len(mv), _ENCODE_CHUNK):
            yield mv[pos : pos + _ENCODE_CHUNK]


def _write_base64(out: IO[bytes], info: FileInfo, data: Path | bytes) -> None:
    digest = hashlib.sha256()
    size = 0
    pending = b""
    for chunk in _chunks(data):
        digest.update(chunk)
        size += len(chunk)
        block = pending + bytes(chunk) if pending else chunk
        cut = len(block) - len(block) % 3
        out.write(base64.b64encode(block[:cut]))
        pending = bytes(block[cut:])
    out.write(base64.b64encode(pending))
    if size != info.size or digest.digest() != info.sha256:
        raise LocalError(f"{info.name}: the file differs from its size or SHA-256")


def export_document(
    meta: DocumentMetadata,
    routing: Routing,
    sender: OrganInfo,
    recipients: Sequence[OrganInfo],
    files: Sequence[tuple[FileInfo, Path | bytes]],
    packet_id: bytes | None = None,
    kind: str = "document",
    *,
    extras: EdxmlExtras | None = None,
    created_at: int | None = None,
    allow_classified: bool = False,
) -> bytes:
    """The edXML bytes of one document (see :func:`write_document` to stream to a file)."""
    buf = io.BytesIO()
    write_document(
        buf,
        meta,
        routing,
        sender,
        recipients,
        files,
        packet_id,
        kind,
        extras=extras,
        created_at=created_at,
        allow_classified=allow_classified,
    )
    return buf.getvalue()


def export_status(
    *,
    status: str,
    response_for: ResponseFor,
    sender: OrganInfo,
    at: int | None = None,
    description: str | None = None,
    staff: StaffInfo | None = None,
    packet_id: bytes | None = None,
) -> bytes:
    """A status packet for a document we received (or, for 13, sent).

    ``status`` is one of our receipt codes (01-06, 13, 15, 16); 02, 13 and 16 need a
    ``description`` (the reason).
    """
    known = STATUS.get(status)
    if known is None:
        raise LocalError(f"status {status!r} is not one of {', '.join(STATUS)}")
    if known.reason_required and not (description and description.strip()):
        raise LocalError(f"status {status} ({known.en}) needs a description")
    _check_organ(sender)
    _local(lambda: check_organ_code(response_for.organ_id))
    if packet_id is not None:
        _local(lambda: check_packet_id(packet_id))
    w = _Writer()
    _open_root(w)
    w.open("Status")
    w.response_for(response_for)
    w.organ("From", sender)
    w.leaf("StatusCode", status)
    w.leaf("Description", description, always=True)
    w.leaf("Timestamp", _timestamp(int(time.time()) if at is None else at))
    if staff is not None:
        w.staff(staff)
    w.close("Status")
    if packet_id is not None:
        w.raw(
            f'<lt:Lienthong xmlns:lt={quoteattr(LT_NS)} version="1">'
            f"<lt:PacketId>{_uuid_text(packet_id)}</lt:PacketId></lt:Lienthong>"
        )
    w.close("edXMLHeader")
    w.raw("<edXML:edXMLBody/>")
    w.close("edXMLEnvelope")
    w.raw("</edXML>\n")
    return w.encoded()


# --- parsing: a bounded tree, attachments streamed -----------------------------------------


def _invalid(detail: str) -> RemoteError:
    return RemoteError("field_invalid", detail)


def _missing(detail: str) -> RemoteError:
    return RemoteError("field_missing", detail)


class _Node:
    __slots__ = ("attrs", "blob", "children", "name", "ns", "parts", "size")

    def __init__(self, ns: str, name: str, attrs: dict[tuple[str, str], str]) -> None:
        self.ns = ns
        self.name = name
        self.attrs = attrs
        self.children: list[_Node] = []
        self.parts: list[str] = []
        self.size = 0
        self.blob: _Blob | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(slots=True)
class _Blob:
    """One attachment's decoded bytes: size, SHA-256, and the partial file if written."""

    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    path: Path | None = None
    sha256: bytes = b""


class _Base64Sink:
    """Decodes base64 text as it arrives, strictly, into a hash and optionally a file."""

    def __init__(self, path: Path | None) -> None:
        self.blob = _Blob(path=path)
        self._fh = path.open("xb") if path is not None else None
        self._buf = ""
        self._ended = False

    def feed(self, text: str) -> None:
        text = text.translate(_B64_WS)
        if not text:
            return
        if self._ended:
            raise _invalid("attachment base64 continues after its padding")
        if self._buf:
            text = self._buf + text
        cut = len(text) - len(text) % 4
        if cut == len(text):
            chunk, self._buf = text, ""
        else:
            chunk, self._buf = text[:cut], text[cut:]
        del text
        if not chunk:
            return
        if chunk.find("=", 0, cut - 4) != -1 or ("=" in chunk and self._buf):
            raise _invalid("attachment base64 has padding inside the data")
        if chunk.endswith("="):
            self._ended = True
        try:
            data = binascii.a2b_base64(chunk, strict_mode=True)
        except ValueError:
            raise _invalid("attachment content is not valid base64") from None
        del chunk
        self.blob.size += len(data)
        self.blob.digest.update(data)
        if self._fh is not None:
            self._fh.write(data)

    def finish(self) -> _Blob:
        self.close()
        if self._buf:
            raise _invalid("attachment base64 length is not a multiple of 4")
        self.blob.sha256 = self.blob.digest.digest()
        return self.blob

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _Handler(ContentHandler):
    """Builds a bounded tree; streams Attachment/ContentTransferEncoded into sinks."""

    def __init__(self, folder: Path | None) -> None:
        super().__init__()
        self.root: _Node | None = None
        self._stack: list[_Node] = []
        self._nodes = 0
        self._text = 0
        self.folder = folder
        self._sink: _Base64Sink | None = None
        self.partials: list[Path] = []
        self._tag = secrets.token_hex(8)

    def startElementNS(self, name: tuple[str | None, str], qname: str | None, attrs: Any) -> None:
        ns, local = name[0] or "", name[1]
        self._nodes += 1
        if self._nodes > NODES_MAX:
            raise _invalid(f"more than {NODES_MAX} elements")
        if len(self._stack) >= DEPTH_MAX:
            raise _invalid(f"elements nested deeper than {DEPTH_MAX}")
        if self._sink is not None:
            raise _invalid("ContentTransferEncoded holds elements")
        node = _Node(ns, local, {(k[0] or "", k[1]): v for k, v in attrs.items()})
        if self._stack:
            self._stack[-1].children.append(node)
        else:
            self.root = node
        if (
            local == "ContentTransferEncoded"
            and self._stack
            and self._stack[-1].name == "Attachment"
        ):
            if len(self.partials) >= MAX_FILES:
                raise _invalid(f"more than {MAX_FILES} attachments")
            path = None
            if self.folder is not None:
                path = self.folder / f".edxml-{self._tag}-{len(self.partials)}.part"
                self.partials.append(path)
            else:
                self.partials.append(Path())
            self._sink = _Base64Sink(path)
        self._stack.append(node)

    def endElementNS(self, name: tuple[str | None, str], qname: str | None) -> None:
        node = self._stack.pop()
        if self._sink is not None:
            node.blob = self._sink.finish()
            self._sink = None

    def characters(self, content: str) -> None:
        if self._sink is not None:
            self._sink.feed(content)
            return
        if not self._stack:
            return
        node = self._stack[-1]
        node.size += len(content)
        self._text += len(content)
        if node.size > TEXT_MAX:
            raise _invalid(f"<{node.name}> holds more than {TEXT_MAX} characters")
        if self._text > TOTAL_TEXT_MAX:
            raise _invalid(f"the header holds more than {TOTAL_TEXT_MAX} characters")
        node.parts.append(content)

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


def _parse(
    source: bytes | bytearray | memoryview | Path, handler: _Handler, max_size: int
) -> _Node:
    """Parse ``source`` into a tree; the caller removes ``handler.partials`` afterwards."""
    parser = DefusedExpatParser(forbid_dtd=True, forbid_entities=True, forbid_external=True)
    parser.setFeature(feature_namespaces, True)
    parser.setContentHandler(handler)
    try:
        if isinstance(source, Path):
            with source.open("rb") as fh:
                if os.fstat(fh.fileno()).st_size > max_size:
                    raise RemoteError("size_limit_exceeded", f"edXML larger than {max_size} bytes")
                total = 0
                while chunk := fh.read(_READ_CHUNK):
                    total += len(chunk)
                    if total > max_size:
                        raise RemoteError(
                            "size_limit_exceeded", f"edXML larger than {max_size} bytes"
                        )
                    parser.feed(chunk)
        else:
            if len(source) > max_size:
                raise RemoteError("size_limit_exceeded", f"edXML larger than {max_size} bytes")
            with memoryview(source) as mv:
                for pos in range(0, len(mv), _READ_CHUNK):
                    parser.feed(bytes(mv[pos : pos + _READ_CHUNK]))
        parser.close()
    except RemoteError:
        handler.abort()
        raise
    except DefusedXmlException as exc:
        handler.abort()
        raise _invalid(
            f"DTDs, entities and external references are refused ({type(exc).__name__})"
        ) from None
    except (SAXException, ValueError, LookupError, OverflowError, RecursionError) as exc:
        handler.abort()
        raise _invalid(f"not well-formed XML: {str(exc)[:200]}") from None
    if handler.root is None:
        raise _invalid("empty document")
    return handler.root


# --- reading the tree --------------------------------------------------------------------


def _kids(node: _Node, name: str) -> list[_Node]:
    return [c for c in node.children if c.name == name and c.ns != LT_NS]


def _one(node: _Node, name: str) -> _Node | None:
    found = _kids(node, name)
    if len(found) > 1:
        raise _invalid(f"<{node.name}> has more than one <{name}>")
    return found[0] if found else None


def _need(node: _Node, name: str) -> _Node:
    found = _one(node, name)
    if found is None:
        raise _missing(f"<{node.name}> has no <{name}>")
    return found


def _clean(raw: str, what: str, max_len: int, multiline: bool = False) -> str | None:
    text = nfc(raw)
    if multiline:
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    else:
        text = text.strip().replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
        text = text.replace("\t", " ")
    if not text:
        return None
    if len(text) > max_len:
        raise _invalid(f"{what} is longer than {max_len} characters")
    for ch in text:
        if unicodedata.category(ch) == "Cc" and not (multiline and ch in "\n\t"):
            raise _invalid(f"{what} holds a control character")
    return text


def _text(node: _Node | None, name: str, max_len: int = 512, multiline: bool = False) -> str | None:
    if node is None:
        return None
    child = _one(node, name)
    if child is None:
        return None
    if child.children:
        raise _invalid(f"<{name}> must hold text, not elements")
    return _clean(child.text, f"<{name}>", max_len, multiline)


def _need_text(node: _Node, name: str, max_len: int = 512, multiline: bool = False) -> str:
    value = _text(node, name, max_len, multiline)
    if value is None:
        raise _missing(f"<{node.name}> has no <{name}> or it is empty")
    return value


def _int(node: _Node | None, name: str, hi: int) -> int | None:
    value = _text(node, name, 16)
    if value is None:
        return None
    if _INT_RE.fullmatch(value) is None or int(value) > hi:
        raise _invalid(f"<{name}> must be an integer from 0 to {hi}")
    return int(value)


def _date(value: str | None, what: str) -> str | None:
    """A national date (yyyy/MM/dd, yyyy-MM-dd or dd/MM/yyyy, time ignored) as YYYY-MM-DD."""
    if value is None:
        return None
    m = _YMD_RE.fullmatch(value)
    if m is not None:
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    else:
        m = _DMY_RE.fullmatch(value)
        if m is None:
            raise _invalid(f"{what} {value[:40]!r} is not a date")
        d, mo, y = int(m[1]), int(m[2]), int(m[3])
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        raise _invalid(f"{what} {value[:40]!r} is not a date") from None


def _time(value: str, what: str) -> int:
    """A national timestamp as Unix seconds; without a zone it is Vietnam time."""
    try:
        m = _YMD_RE.fullmatch(value) or _DMY_RE.fullmatch(value)
        if m is not None:
            a, b, c = int(m[1]), int(m[2]), int(m[3])
            y, mo, d = (a, b, c) if len(m[1]) == 4 else (c, b, a)
            hh, mm, ss = int(m[4] or 0), int(m[5] or 0), int(m[6] or 0)
            when = datetime(y, mo, d, hh, mm, ss, tzinfo=VN_TZ)
        else:
            when = datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=VN_TZ)
        at = int(when.timestamp())
    except (ValueError, OverflowError, OSError):
        raise _invalid(f"{what} {value[:40]!r} is not a timestamp") from None
    if at < 0:
        raise _invalid(f"{what} is before 1970")
    return at


def _organ_id(value: str, what: str) -> str:
    try:
        return check_organ_code(value)
    except RemoteError:
        raise _invalid(f"{what} {value[:80]!r} is not an organ code") from None


def _organ(node: _Node, what: str) -> OrganInfo:
    return OrganInfo(
        organ_id=_organ_id(_need_text(node, "OrganId", 64), f"{what}/OrganId"),
        name=_text(node, "OrganName", 512),
        in_charge=_text(node, "OrganizationInCharge", 512),
        address=_text(node, "OrganAdd", 512),
        email=_text(node, "Email", 256),
        telephone=_text(node, "Telephone", 64),
        fax=_text(node, "Fax", 64),
        website=_text(node, "Website", 256),
    )


def _response_for(node: _Node) -> ResponseFor:
    return ResponseFor(
        organ_id=_organ_id(_need_text(node, "OrganId", 64), "ResponseFor/OrganId"),
        code=_text(node, "Code", 128),
        promulgation_date=_date(_text(node, "PromulgationDate", 32), "ResponseFor date"),
        document_id=_text(node, "DocumentId", 256),
    )


def _staff(node: _Node | None) -> StaffInfo | None:
    if node is None:
        return None
    staff = StaffInfo(
        department=_text(node, "Department", 256),
        staff=_text(node, "Staff", 256),
        mobile=_text(node, "Mobile", 64),
        email=_text(node, "Email", 256),
    )
    return None if staff == StaffInfo() else staff


def _uuid(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value).bytes
    except ValueError:
        raise _invalid(f"{what} is not a UUID") from None


def _envelope(root: _Node) -> _Node:
    if root.name == "edXML":
        return _need(root, "edXMLEnvelope")
    if root.name == "edXMLEnvelope":
        return root
    raise _invalid(f"the root element is <{root.name}>, not <edXML> or <edXMLEnvelope>")


def _lienthong(header: _Node) -> _Node | None:
    found = [c for c in header.children if c.ns == LT_NS and c.name == "Lienthong"]
    if len(found) > 1:
        raise _invalid("<edXMLHeader> has more than one <lt:Lienthong>")
    return found[0] if found else None


def _lt_text(lt: _Node | None, name: str, max_len: int, multiline: bool = False) -> str | None:
    if lt is None:
        return None
    found = [c for c in lt.children if c.ns == LT_NS and c.name == name]
    if len(found) > 1:
        raise _invalid(f"<lt:Lienthong> has more than one <lt:{name}>")
    if not found:
        return None
    return _clean(found[0].text, f"<lt:{name}>", max_len, multiline)


def _lt_children(lt: _Node | None, name: str) -> list[_Node]:
    return [] if lt is None else [c for c in lt.children if c.ns == LT_NS and c.name == name]


def _cid(value: str) -> str:
    value = value.strip()
    if value[:4].lower() == "cid:":
        value = value[4:]
    return value.strip("<>").strip()


def _attachments(root: _Node, envelope: _Node) -> list[_Node]:
    holders = [root, envelope]
    body = _one(envelope, "edXMLBody")
    if body is not None:
        holders.append(body)
    found: list[_Node] = []
    seen: set[int] = set()
    for holder in holders:
        if id(holder) in seen:
            continue
        seen.add(id(holder))
        for enc in _kids(holder, "AttachmentEncoded"):
            found.extend(_kids(enc, "Attachment"))
    return found


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    media_type: str
    blob: _Blob


def _files(root: _Node, envelope: _Node, lt: _Node | None) -> list[_File]:
    manifest: dict[str, tuple[str | None, str | None]] = {}
    order: list[str] = []
    body = _one(envelope, "edXMLBody")
    man = _one(body, "edXMLManifest") if body is not None else None
    for ref in _kids(man, "Reference") if man is not None else []:
        raw = _text(ref, "ContentId", 512) or ref.attrs.get((XLINK_NS, "href"))
        if not raw or not _cid(raw):
            raise _missing("a manifest <Reference> has no ContentId")
        cid = _cid(raw)
        if cid in manifest:
            raise _invalid(f"content id {cid[:80]!r} appears twice in the manifest")
        manifest[cid] = (_text(ref, "AttachmentName", 1024), _text(ref, "ContentType", 127))
        order.append(cid)
    blobs: dict[str, tuple[_Node, _Blob]] = {}
    for att in _attachments(root, envelope):
        raw = _text(att, "ContentId", 512)
        if raw is None or not _cid(raw):
            raise _missing("an <Attachment> has no ContentId")
        cid = _cid(raw)
        if cid in blobs:
            raise _invalid(f"content id {cid[:80]!r} appears twice")
        content = _one(att, "ContentTransferEncoded")
        if content is None or content.blob is None:
            raise _missing(f"attachment {cid[:80]!r} has no ContentTransferEncoded")
        blobs[cid] = (att, content.blob)
        if cid not in manifest:
            order.append(cid)
    digests: dict[str, bytes] = {}
    for node in _lt_children(lt, "File"):
        cid = _cid(node.attrs.get(("", "cid"), ""))
        hex_ = node.attrs.get(("", "sha256"), "")
        try:
            digest = bytes.fromhex(hex_)
        except ValueError:
            digest = b""
        if not cid or len(digest) != 32:
            raise _invalid("<lt:File> needs a cid and a 64-digit hex sha256")
        digests[cid] = digest
    out: list[_File] = []
    names: set[str] = set()
    for cid in order:
        if cid not in blobs:
            raise _missing(f"the manifest names {cid[:80]!r} but no attachment holds it")
        att, blob = blobs[cid]
        man_name, man_type = manifest.get(cid, (None, None))
        name = man_name or _text(att, "AttachmentName", 1024)
        if name is None:
            raise _missing(f"attachment {cid[:80]!r} has no AttachmentName")
        try:
            check_file_name(name)
        except RemoteError:
            raise _invalid(f"attachment name {name[:80]!r} is not a single file name") from None
        if len(name.encode()) > _NAME_BYTES_MAX:
            # 255 characters of Vietnamese can be 700 bytes: more than a file system takes.
            raise _invalid(f"attachment name {name[:80]!r} is longer than 255 bytes in UTF-8")
        if name.casefold() in names:
            raise _invalid(f"attachment name {name[:80]!r} appears twice")
        names.add(name.casefold())
        media = _text(att, "ContentType", 127) or man_type or "application/octet-stream"
        expected = digests.get(cid)
        if expected is not None and expected != blob.sha256:
            raise RemoteError("file_digest_mismatch", f"attachment {name[:80]!r} SHA-256 differs")
        out.append(_File(name, media, blob))
    if len(out) > MAX_FILES:
        raise _invalid(f"more than {MAX_FILES} attachments")
    return out


def _reference(lt: _Node | None) -> Reference | None:
    found = _lt_children(lt, "Reference")
    if len(found) > 1:
        raise _invalid("<lt:Lienthong> has more than one <lt:Reference>")
    if not found:
        return None
    attrs = found[0].attrs

    def get(key: str, max_len: int) -> str | None:
        value = attrs.get(("", key))
        return None if value is None else _clean(value, f"lt:Reference/@{key}", max_len)

    doc_type = get("type", 16)
    if doc_type is None:
        raise _missing("<lt:Reference> has no type")
    return Reference(
        doc_type=doc_type,
        number=get("number", 32),
        notation=get("notation", 64),
        date=_date(get("date", 10), "lt:Reference/@date"),
    )


def _as_field_error(check: Callable[[], object]) -> None:
    try:
        check()
    except RemoteError as exc:
        if exc.code in ("field_invalid", "field_missing"):
            raise
        raise _invalid(exc.detail) from None


def _interpret(root: _Node, handler: _Handler) -> ImportedDocument:
    envelope = _envelope(root)
    header = _need(envelope, "edXMLHeader")
    mh = _need(header, "MessageHeader")
    lt = _lienthong(header)
    sender = _organ(_need(mh, "From"), "From")
    tos = _kids(mh, "To")
    if not tos:
        raise _missing("<MessageHeader> has no <To>")
    if len(tos) > MAX_RECIPIENTS:
        raise _invalid(f"more than {MAX_RECIPIENTS} recipients")
    recipients = tuple(_organ(t, "To") for t in tos)
    if len({r.organ_id for r in recipients}) != len(recipients):
        raise _invalid("a <To> organ appears twice")
    code = _one(mh, "Code")
    number = _text(code, "CodeNumber", 32)
    notation = _text(code, "CodeNotation", 64)
    prom = _one(mh, "PromulgationInfo")
    place = _text(prom, "Place", 256)
    issued = _date(_text(prom, "PromulgationDate", 32), "PromulgationDate")
    dtype = _one(mh, "DocumentType")
    type_name = _text(dtype, "TypeName", 128)
    signer = _one(mh, "SignerInfo")
    other = _one(mh, "OtherInfo")
    urgency = _int(other, "Priority", 4) or 0
    appendixes_node = _one(other, "Appendixes") if other is not None else None
    to_places_node = _one(mh, "ToPlaces")
    trace_list = _one(header, "TraceHeaderList")
    business = _one(trace_list, "Bussiness") if trace_list is not None else None
    doc_type_code = _int(business, "BussinessDocType", 3)
    kind = _KIND_OF[doc_type_code or 0]
    trace = tuple(
        TraceEntry(
            organ_id=_organ_id(_need_text(t, "OrganId", 64), "TraceHeader/OrganId"),
            at=_time(_need_text(t, "Timestamp", 64), "TraceHeader/Timestamp"),
        )
        for t in (_kids(trace_list, "TraceHeader") if trace_list is not None else [])
    )
    secrecy_text = _lt_text(lt, "Secrecy", 4)
    if secrecy_text is not None and secrecy_text not in ("0", "1", "2", "3"):
        raise _invalid("<lt:Secrecy> must be 0-3")
    packet_id = _uuid(_lt_text(lt, "PacketId", 64), "lt:PacketId")
    if packet_id is not None:
        try:
            check_packet_id(packet_id)
        except RemoteError:
            raise _invalid("<lt:PacketId> is not a UUIDv7") from None

    meta = DocumentMetadata(
        subject=_need_text(mh, "Subject", 4000, multiline=True),
        doc_type=doc_type_from_name(type_name, notation),
        number=number,
        notation=notation,
        signer=_text(signer, "FullName", 256),
        issued=issued,
        place=place,
        notes=_lt_text(lt, "Notes", 16000, multiline=True),
    )
    secrecy = int(secrecy_text or 0)
    routing = Routing(
        urgency=urgency,
        secrecy=secrecy,
        due=_date(_text(mh, "DueDate", 32), "DueDate"),
        reference=_reference(lt)
        if lt is not None
        else (Reference(meta.doc_type, number, notation, issued) if secrecy == 0 else None),
        in_reply_to=_uuid(_lt_text(lt, "InReplyTo", 64), "lt:InReplyTo"),
        target=_uuid(_lt_text(lt, "Target", 64), "lt:Target"),
    )
    _as_field_error(lambda: DocumentMetadata.from_cbor(meta.to_cbor()))
    _as_field_error(lambda: Routing.from_cbor(routing.to_cbor()))
    extras = EdxmlExtras(
        document_id=_text(mh, "DocumentId", 256),
        type_code=_text(dtype, "Type", 16),
        type_detail=_text(dtype, "TypeDetail", 16),
        type_name=type_name,
        content=_text(mh, "Content", 16000, multiline=True),
        competence=_text(signer, "Competence", 256),
        position=_text(signer, "Position", 256),
        to_places=tuple(
            p
            for p in (
                _clean(n.text, "<ToPlaces/Place>", 512)
                for n in (_kids(to_places_node, "Place") if to_places_node is not None else [])
            )
            if p is not None
        ),
        sphere=_text(other, "SphereOfPromulgation", 256),
        typer_notation=_text(other, "TyperNotation", 64),
        promulgation_amount=_int(other, "PromulgationAmount", 1_000_000),
        page_amount=_int(other, "PageAmount", 1_000_000),
        appendixes=tuple(
            a
            for a in (
                _clean(n.text, "<Appendix>", 1024)
                for n in (_kids(appendixes_node, "Appendix") if appendixes_node is not None else [])
            )
            if a is not None
        ),
        response_for=tuple(_response_for(n) for n in _kids(mh, "ResponseFor")),
        steering_type=_int(mh, "SteeringType", 99),
        business_reason=_text(business, "BussinessDocReason", 2000, multiline=True),
        business_document_id=_text(business, "DocumentId", 256),
        paper=_int(business, "Paper", 99),
        staff=_staff(_one(business, "StaffInfo") if business is not None else None),
    )
    files = _files(root, envelope, lt)
    meta = replace(
        meta,
        files=tuple(FileInfo(f.name, f.media_type, f.blob.size, f.blob.sha256) for f in files),
    )
    written: list[Path] = []
    folder = handler.folder
    if folder is not None:
        for f in files:
            final = folder / f.name
            if final.exists():
                raise LocalError(f"{final} already exists")
        for f in files:
            assert f.blob.path is not None
            final = folder / f.name
            os.replace(f.blob.path, final)
            written.append(final)
    return ImportedDocument(
        metadata=meta,
        routing=routing,
        kind=kind,
        sender=sender,
        recipients=recipients,
        extras=extras,
        packet_id=packet_id,
        trace=trace,
        files=tuple(written),
    )


def import_document(
    source: bytes | bytearray | memoryview | Path,
    folder: Path | None = None,
    *,
    max_size: int = IMPORT_MAX,
) -> ImportedDocument:
    """Read an edXML document; write its attachments into ``folder`` (NFC names).

    With ``folder`` None the attachments are decoded, measured and hashed but not kept.
    Files appear in ``folder`` only once the whole document has parsed and checked; on any
    error nothing is left behind.  Bad input raises a :class:`RemoteError` (see the module
    documentation for the codes).
    """
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    handler = _Handler(folder)
    try:
        return _interpret(_parse(source, handler, max_size), handler)
    finally:
        handler.abort()
        # Renamed into place on success; on any failure nothing partial is left behind.
        for partial in handler.partials:
            if partial != Path():
                _unlink(partial)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def import_document_from_bytes(data: bytes) -> ImportedDocument:
    """Parse edXML bytes without writing any file: the fuzzing and validation entry point."""
    return import_document(data)


def import_status(
    source: bytes | bytearray | memoryview | Path, *, max_size: int = 4 * 1024 * 1024
) -> EdxmlStatus:
    """Read a status packet.  Also accepts the older SOAP form (Envelope/Header/Status)."""
    handler = _Handler(None)
    try:
        root = _parse(source, handler, max_size)
    finally:
        handler.abort()
    if root.name == "Envelope":
        header = _need(root, "Header")
        lt = None
    else:
        envelope = _envelope(root)
        header = _need(envelope, "edXMLHeader")
        lt = _lienthong(header)
    status_node = _need(header, "Status")
    raw_code = _need_text(status_node, "StatusCode", 8)
    code = raw_code.zfill(2) if raw_code.isdigit() and len(raw_code) <= 2 else raw_code
    known = STATUS.get(code)
    if known is None:
        raise RemoteError(
            "status_code_unknown", f"status {raw_code[:16]!r} is not one of {', '.join(STATUS)}"
        )
    description = _text(status_node, "Description", 2000, multiline=True)
    if known.reason_required and description is None:
        raise RemoteError("reason_required", f"status {code} ({known.en}) has no description")
    packet_id = _uuid(_lt_text(lt, "PacketId", 64), "lt:PacketId")
    if packet_id is not None:
        try:
            check_packet_id(packet_id)
        except RemoteError:
            raise _invalid("<lt:PacketId> is not a UUIDv7") from None
    return EdxmlStatus(
        status=code,
        response_for=_response_for(_need(status_node, "ResponseFor")),
        sender=_organ(_need(status_node, "From"), "From"),
        at=_time(_need_text(status_node, "Timestamp", 64), "Timestamp"),
        description=description,
        staff=_staff(_one(status_node, "StaffInfo")),
        packet_id=packet_id,
    )
